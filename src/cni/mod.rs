//! headcni as a CNI plugin (CNI 1.1: ADD, DEL, CHECK, GC, STATUS, VERSION).
//!
//! The plugin never touches netlink itself: it writes (or removes) the pod
//! intent in the shared store and runs the engine's plan/apply scoped to that
//! pod. Only the result or the error document reaches stdout; logs go to
//! stderr and the optional log file.

mod config;
pub mod error;
pub mod handoff;
mod result;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

pub(crate) use config::same_namespace;
use config::CniEnv;
pub use config::{validate_netns, NetConf, SUPPORTED_VERSIONS};
use error::CniError;

use crate::model::PodKey;
use crate::observe;
use crate::spec::{alloc, Mode, Spec};
use crate::store::PodStore;

/// The newest version, for answers when the request's version is unknown.
const LATEST: &str = "1.1.0";

/// Runs one CNI invocation from the process environment and stdin.
pub fn run() -> ExitCode {
    let env = CniEnv::from_env();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let conf = NetConf::parse(&stdin);
    if let Ok(conf) = &conf {
        init_logging(conf);
    }
    let answer_version = conf
        .as_ref()
        .map(|c| c.cni_version.clone())
        .unwrap_or_else(|_| LATEST.to_string());
    let started = Instant::now();
    let outcome = match read {
        Err(e) => Err(CniError::new(
            error::IO_FAILURE,
            format!("reading stdin: {e}"),
        )),
        Ok(_) => dispatch(&env, conf, &stdin),
    };
    tracing::info!(command = %env.command, container = ?env.container_id, took_ms = started.elapsed().as_secs_f64() * 1000.0, ok = outcome.is_ok(), "cni");
    match outcome {
        Ok(Some(doc)) => {
            outln!("{doc}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!("{} failed: {e}", env.command);
            outln!("{}", e.to_json(&answer_version));
            ExitCode::from(1)
        }
    }
}

fn dispatch(
    env: &CniEnv,
    conf: Result<NetConf, CniError>,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        // VERSION must answer even for a config it would refuse.
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST.to_string());
        return Ok(Some(
            json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let conf = conf?;
    match env.command.as_str() {
        "ADD" => add(env, &conf).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "GC" => gc(&conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        "" => Err(CniError::new(error::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            error::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    }
}

fn load_spec(conf: &NetConf) -> Result<Spec, CniError> {
    let spec = Spec::load(&conf.spec_path())
        .map_err(|e| CniError::new(error::INVALID_CONFIG, crate::Chain(&e).to_string()))?;
    if let Some(dir) = &conf.state_dir {
        // One node pod network, one store: a second store would hand out
        // addresses the first already gave to running pods.
        if !dir.is_absolute() {
            return Err(CniError::new(
                error::INVALID_CONFIG,
                format!("stateDir {} must be an absolute path (better: leave it out; the spec's state_dir is the store)", dir.display()),
            ));
        }
        if *dir != spec.state_dir {
            return Err(CniError::new(
                error::INVALID_CONFIG,
                format!(
                    "stateDir {} differs from state_dir {} in {}: a node's pod network has one store; leave stateDir out of the network configuration",
                    dir.display(),
                    spec.state_dir.display(),
                    spec.source.display()
                ),
            ));
        }
    }
    Ok(spec)
}

fn store(spec: &Spec, conf: &NetConf) -> PodStore {
    let store = spec.pod_store();
    match conf.lock_timeout_ms {
        Some(ms) => store.with_lock_timeout(std::time::Duration::from_millis(ms)),
        None => store,
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let key = env.pod_key()?;
    let netns = env.netns()?;
    let spec = load_spec(conf)?;
    let request = handoff::Request::Add {
        key: key.clone(),
        netns: netns.clone(),
    };
    let wired = match handoff::ask(&spec.state_dir, &request, handoff::ANSWER_WITHIN) {
        handoff::Handoff::Answered(verdict) => verdict?.ok_or_else(|| {
            CniError::new(
                error::APPLY_FAILED,
                format!("the daemon wired {key} but did not say how"),
            )
        })?,
        handoff::Handoff::NoDaemon => {
            crate::attach::add_here(&spec, &store(&spec, conf), &key, &netns)?
        }
        handoff::Handoff::Lost(why) => {
            tracing::warn!("{why}; wiring pod {key} here");
            crate::attach::add_here(&spec, &store(&spec, conf), &key, &netns)?
        }
    };
    let result = result::Wired {
        intent: &wired.intent,
        spec: &spec,
        host_mac: wired.host_mac,
        pod_mac: wired.pod_mac,
    };
    Ok(result::add_result(
        &conf.cni_version,
        &result,
        conf.dns.as_ref(),
    ))
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let key = env.pod_key()?;
    let spec = load_spec(conf)?;
    let request = handoff::Request::Del { key: key.clone() };
    match handoff::ask(&spec.state_dir, &request, handoff::ANSWER_WITHIN) {
        handoff::Handoff::Answered(verdict) => verdict.map(|_| ()),
        handoff::Handoff::NoDaemon => crate::attach::del_here(&spec, &store(&spec, conf), &key),
        handoff::Handoff::Lost(why) => {
            tracing::warn!("{why}; removing pod {key} here");
            crate::attach::del_here(&spec, &store(&spec, conf), &key)
        }
    }
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let key = env.pod_key()?;
    let netns = env.netns()?;
    let prev_ips = match &conf.prev_result {
        Some(prev) => prev_result_ips(prev)?,
        None => None,
    };
    let spec = load_spec(conf)?;
    let intents = store(&spec, conf).list()?;
    let intent = intents.into_iter().find(|i| i.key == key).ok_or_else(|| {
        CniError::new(
            error::UNKNOWN_CONTAINER,
            format!("no attachment {key} is known"),
        )
    })?;
    crate::attach::check(&spec, &intent, &netns, prev_ips.as_deref())
}

/// The addresses a prevResult lists; anything that is not a CNI result
/// (not an object, `ips` not a list of objects with a string `address`) is
/// refused rather than passed as "nothing to compare".
pub(crate) fn prev_result_ips(prev: &Value) -> Result<Option<Vec<String>>, CniError> {
    let bad = |what: &str| {
        CniError::new(
            error::DECODE_FAILURE,
            format!("prevResult is not a CNI result: {what}"),
        )
    };
    let prev = prev.as_object().ok_or_else(|| bad("not an object"))?;
    let Some(ips) = prev.get("ips") else {
        return Ok(None);
    };
    ips.as_array()
        .ok_or_else(|| bad("ips is not a list"))?
        .iter()
        .map(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad("an entry of ips has no string address"))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.gc_attachments().ok_or_else(|| {
        CniError::new(error::INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
    })?;
    let spec = load_spec(conf)?;
    let store = store(&spec, conf);
    let valid: Vec<PodKey> = valid
        .iter()
        .map(|a| PodKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    crate::attach::gc(&spec, &store, &valid)
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::new(error::NOT_AVAILABLE, msg);
    let spec = load_spec(conf).map_err(|e| unavailable(e.msg))?;
    let intents = store(&spec, conf)
        .list()
        .map_err(|e| unavailable(crate::Chain(&e).to_string()))?;
    for range in spec.pod_network.ranges() {
        if intents.len() as u64 >= alloc::capacity(range.cidr, range.gateway) {
            return Err(unavailable(format!(
                "pod CIDR {} has no addresses left ({} allocated)",
                range.cidr,
                intents.len()
            )));
        }
    }
    if spec.mode == Mode::Daemon {
        // The tailnet interface lives in the daemon's own namespace.
        let netns = spec.daemon.netns_path();
        let iface = &spec.tailnet.interface;
        let names = crate::kernel::netlink::in_netns(&netns, observe::link_names)
            .map_err(|e| {
                unavailable(format!(
                    "tailnet interface {iface}: {} (is `headcni daemon` running?)",
                    crate::Chain(&e)
                ))
            })?
            .map_err(|e| unavailable(format!("tailnet interface {iface}: {}", crate::Chain(&e))))?;
        if !names.contains(&spec.tailnet.interface) {
            return Err(unavailable(format!(
                "tailnet interface {} is not present",
                spec.tailnet.interface
            )));
        }
    }
    Ok(())
}

/// The plugin's log file: absolute, never through a symlink, a regular file
/// (created 0600). Anything else is skipped with a warning on stderr: the
/// network configuration is not trusted to name what root appends to.
fn open_log_file(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| {
        eprintln!(
            "headcni: logFile {}: {why}; logging to stderr only",
            path.display()
        );
        None
    };
    if !path.is_absolute() {
        return refuse("not an absolute path".into());
    }
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return refuse(e.to_string()),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => Some(file),
        Ok(_) => refuse("not a regular file".into()),
        Err(e) => refuse(e.to_string()),
    }
}

/// Logs to stderr and, if configured, to the log file; never to stdout.
fn init_logging(conf: &NetConf) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let level = conf.log_level.as_deref().unwrap_or("warn");
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let file = conf.log_file.as_deref().and_then(open_log_file);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(f) => builder
            .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
