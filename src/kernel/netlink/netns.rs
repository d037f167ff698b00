//! Named network namespaces (/run/netns/NAME, as iproute2 makes them) and
//! entering one in a child before it execs: the kernel boundary for the
//! daemon's tailnet namespace.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Makes /run/netns/NAME a network namespace unless it is one already.
pub fn ensure_netns(path: &Path) -> std::io::Result<()> {
    if super::is_netns_file(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        make_shared_mount(dir)?;
    }
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

/// Unbinds and removes /run/netns/NAME (what `ip netns del` does); false
/// when there was no namespace there. Whatever still runs inside keeps it
/// alive until it exits.
pub fn remove_netns(path: &Path) -> std::io::Result<bool> {
    if !super::is_netns_file(path) {
        return Ok(false);
    }
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)?;
    std::fs::remove_file(path)?;
    Ok(true)
}

/// Makes `dir` a shared mount point, as `ip netns add` does for /run/netns:
/// a namespace bound there from a container (a DaemonSet's mount namespace)
/// is then seen on the host, and tools that enter it by name find it.
fn make_shared_mount(dir: &Path) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes `cmd`'s child enter the namespace `netns` before it execs; with
/// `resolv`, also a mount namespace of its own where that file is bound over
/// /etc/resolv.conf (what `ip netns exec` does with /etc/netns/NAME/resolv.conf).
pub fn enter_before_exec(
    cmd: &mut tokio::process::Command,
    netns: &std::fs::File,
    resolv: Option<&Path>,
) {
    let fd = netns.as_raw_fd();
    // Made before the fork: the child may only make syscalls.
    let resolv = resolv.and_then(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok());
    // SAFETY: pre_exec runs in the forked child before exec; setns, unshare
    // and mount are async-signal-safe, the strings were allocated before the
    // fork, and `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(file) = &resolv {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    file.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
}
