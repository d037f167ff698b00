//! What an applied pass means for one CNI call: the same judgement whether
//! the plugin ran the pass itself or the daemon ran it for a batch of calls.

use super::error::{self, CniError};
use crate::diff::Object;
use crate::engine::Applied;
use crate::model::{Attachment, PodKey};

/// ADD: the pod is wired when none of its own steps failed and nothing of
/// it is left, waits or is in the way. Node-wide steps (the tailnet route,
/// forwarding) are everyone's: their failure is logged, not this ADD's.
pub fn wired(applied: &Applied, key: &PodKey) -> Result<(), CniError> {
    let mine = applied.remaining.for_pod(key);
    if !mine.conflicts.is_empty() {
        return Err(CniError::new(
            error::CONFLICT,
            format!("objects headcni does not own are in the way of pod {key}"),
        )
        .with_details(crate::report::text::conflicts(&mine)));
    }
    let failed = &applied.report.failed;
    for f in failed.iter().filter(|f| f.step.attachment.is_none()) {
        tracing::warn!("node-wide step failed during ADD of {key}: {f}");
    }
    let is_mine = |a: &Option<Attachment>| a.as_ref().and_then(Attachment::pod) == Some(key);
    let own: Vec<String> = failed
        .iter()
        .filter(|f| is_mine(&f.step.attachment))
        .map(|f| f.to_string())
        .collect();
    if !own.is_empty() {
        return Err(
            CniError::new(error::APPLY_FAILED, format!("wiring pod {key} failed"))
                .with_details(own.join("; ")),
        );
    }
    if let Some(w) = mine.waiting.first() {
        return Err(CniError::new(
            error::APPLY_FAILED,
            format!("pod {key}: {}", w.reason),
        ));
    }
    if !mine.is_empty() {
        return Err(
            CniError::new(error::APPLY_FAILED, format!("pod {key} did not converge"))
                .with_details(crate::report::text::plan(&mine, false)),
        );
    }
    Ok(())
}

/// DEL: the attachment is gone when no step on its host link failed.
pub fn released(applied: &Applied, key: &PodKey, host_link: &str) -> Result<(), CniError> {
    let on_link = |object: &Object| match object {
        Object::Link(l) => l.name == host_link,
        Object::Address(a) => a.dev == host_link,
        Object::Route(r) => r.dev.as_deref() == Some(host_link),
        _ => false,
    };
    let failed: Vec<String> = applied
        .report
        .failed
        .iter()
        .filter(|f| on_link(&f.step.object))
        .map(|f| f.to_string())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(error::APPLY_FAILED, format!("removing pod {key}"))
                .with_details(failed.join("; ")),
        )
    }
}
