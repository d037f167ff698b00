//! `--log-format json`: one object a line with klog's (and zap's) top-level
//! fields, as Kubernetes log pipelines read them: `ts` (Unix seconds),
//! `level`, `msg`, `target`, then each of the event's own fields at the top
//! level (`cidr`, `node_id`, ...), so facts are fields, not words in `msg`.

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct KlogJson;

/// Names headcni's own fields may not take: they would hide the line's own.
const RESERVED: [&str; 4] = ["ts", "level", "msg", "target"];

#[derive(Default)]
struct Fields {
    msg: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "message" {
            self.msg = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else if RESERVED.contains(&name) {
            self.rest.insert(format!("field.{name}"), value);
        } else {
            self.rest.insert(name.to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for KlogJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_log::NormalizeEvent;
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Records of the `log` crate (netlink, sled, ureq) come as target
        // "log" with log.* fields: their own target instead, without those.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        fields.rest.retain(|k, _| !k.starts_with("log."));
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), ts.into());
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("msg".into(), fields.msg.into());
        line.insert("target".into(), meta.target().into());
        line.extend(fields.rest);
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}
