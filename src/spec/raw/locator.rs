//! Byte spans into errors that name file, line, column and field.

use super::*;

/// Turns byte spans into located errors.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Locator<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    /// `v` parsed as a `what` (its reason if not).
    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        v: &Spanned<String>,
        field: &str,
        what: &str,
    ) -> Result<T, SpecError>
    where
        T::Err: std::fmt::Display,
    {
        v.get_ref()
            .parse()
            .map_err(|e| self.invalid(v.span(), field, format!("not {what}: {e}")))
    }

    pub(super) fn absolute_path(
        &self,
        v: &Spanned<String>,
        field: &str,
    ) -> Result<PathBuf, SpecError> {
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(self.invalid(v.span(), field, "must be an absolute path"))
        }
    }

    pub(super) fn in_range(
        &self,
        v: &Spanned<i64>,
        field: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, SpecError> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.invalid(
                v.span(),
                field,
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            ))
        }
    }

    pub(super) fn invalid(
        &self,
        span: Range<usize>,
        field: &str,
        reason: impl Into<String>,
    ) -> SpecError {
        let (line, column) = self.line_col(span.start);
        SpecError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
