use std::fmt;
use std::path::PathBuf;

/// Why a spec was refused. Every variant names the file; validation errors
/// also name the line, column and field so the operator can go straight to it.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}", Located { file, line: *line, column: *column, field: None, reason: message })]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", Located { file, line: *line, column: *column, field: Some(field), reason })]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
        reason: String,
    },
}

impl SpecError {
    /// The (line, field) of a located error, for tests and tooling.
    pub fn location(&self) -> Option<(usize, Option<&str>)> {
        match self {
            SpecError::Read { .. } => None,
            SpecError::Syntax { line, .. } => Some((*line, None)),
            SpecError::Invalid { line, field, .. } => Some((*line, Some(field.as_str()))),
        }
    }
}

struct Located<'a> {
    file: &'a PathBuf,
    line: usize,
    column: usize,
    field: Option<&'a String>,
    reason: &'a String,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(field) = self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}
