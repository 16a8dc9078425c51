//! The per-task logger: a small process, apart from the node, that reads a task's
//! stdout and stderr from pipes and appends them to `stdout`/`stderr` in the sandbox,
//! rotating each file by size (rename `stdout` → `stdout.1` → ... → `stdout.<keep>`),
//! as Mesos's logrotate container logger does.
//!
//! It is a forked copy of the node (double fork, own session) rather than a separate
//! executable, so it exists wherever the node library runs (the `sandtrail` binary
//! and tests alike) and outlives the node: a task and its logs survive an agent
//! restart. The trade-off is that the forked child of a multi-threaded process may
//! only use async-signal-safe calls: it allocates nothing and calls only `read`,
//! `write`, `poll`, `open`, `rename`, `close` and `_exit` on memory prepared before the
//! fork. It ends when both pipes reach end of file, i.e. when the task and everything
//! it forked have closed them.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Error, Result};

/// Default size at which a log file is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept (`stdout.1` .. `stdout.5`).
pub const DEFAULT_KEEP: u32 = 5;

/// Rotation settings of the task logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before a write would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept; the oldest beyond this is overwritten.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// One stream's file names, prepared before the fork: `names[0]` is the live file,
/// `names[i]` its i-th rotation.
struct Stream {
    names: Vec<CString>,
}

fn stream(dir: &Path, base: &str, keep: u32) -> Result<Stream> {
    let mut names = Vec::with_capacity(keep as usize + 1);
    for i in 0..=keep {
        let name = if i == 0 {
            base.to_string()
        } else {
            format!("{base}.{i}")
        };
        let p = dir.join(name);
        names.push(
            CString::new(p.as_os_str().as_bytes())
                .map_err(|e| Error::io(&p, std::io::Error::other(e)))?,
        );
    }
    Ok(Stream { names })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the logger for a sandbox and returns the write ends of the stdout and
/// stderr pipes for the task. Blocking (fork and wait for the intermediate child):
/// run off the async runtime.
pub fn spawn(dir: &Path, rotation: Rotation) -> Result<(OwnedFd, OwnedFd)> {
    let keep = rotation.keep.max(1);
    let out = stream(dir, "stdout", keep)?;
    let err = stream(dir, "stderr", keep)?;
    let (out_r, out_w) = pipe().map_err(|e| Error::io(dir, e))?;
    let (err_r, err_w) = pipe().map_err(|e| Error::io(dir, e))?;
    use std::os::fd::AsRawFd;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd()];
    let keep_open = [out_r.as_raw_fd(), err_r.as_raw_fd()];
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: after fork the child only runs `logger_child`, which uses async-signal
    // safe calls on memory allocated before the fork, and never returns.
    match unsafe { libc::fork() } {
        -1 => return Err(Error::io(dir, std::io::Error::last_os_error())),
        0 => unsafe {
            // Intermediate child: a new session, then the logger is its child and is
            // reparented to init once this one exits, so the node never reaps it.
            libc::setsid();
            match libc::fork() {
                0 => logger_child(
                    &keep_open,
                    fds,
                    [&out, &err],
                    rotation.max_bytes,
                    keep,
                    &mut buf,
                ),
                _ => libc::_exit(0),
            }
        },
        pid => {
            let mut status = 0;
            // SAFETY: waits for the intermediate child forked just above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
    drop(out_r);
    drop(err_r);
    Ok((out_w, err_w))
}

/// The logger's whole life. Never returns.
///
/// # Safety
/// Only call in a freshly forked child; see the module docs.
unsafe fn logger_child(
    keep_open: &[i32; 2],
    fds: [i32; 2],
    streams: [&Stream; 2],
    max_bytes: u64,
    keep: u32,
    buf: &mut [u8],
) -> ! {
    // Close every inherited fd but the two read ends (the node's sockets, the write
    // ends of these pipes...), so nothing of the node outlives it here.
    let max_fd = 4096;
    for fd in 0..max_fd {
        if !keep_open.contains(&fd) {
            libc::close(fd);
        }
    }
    let mut files = [-1i32; 2];
    let mut sizes = [0u64; 2];
    for i in 0..2 {
        files[i] = open_append(&streams[i].names[0]);
        sizes[i] = file_size(files[i]);
    }
    let mut open = [true, true];
    while open[0] || open[1] {
        let mut pfds = [
            libc::pollfd {
                fd: if open[0] { fds[0] } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { fds[1] } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if libc::poll(pfds.as_mut_ptr(), 2, -1) < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        for i in 0..2 {
            if !open[i] || pfds[i].revents == 0 {
                continue;
            }
            let n = libc::read(fds[i], buf.as_mut_ptr().cast(), buf.len());
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                open[i] = false;
                continue;
            }
            let n = n as usize;
            if sizes[i] > 0 && sizes[i] + n as u64 > max_bytes {
                libc::close(files[i]);
                rotate(streams[i], keep);
                files[i] = open_append(&streams[i].names[0]);
                sizes[i] = 0;
            }
            let mut written = 0;
            while written < n {
                let w = libc::write(files[i], buf[written..n].as_ptr().cast(), n - written);
                if w < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                if w <= 0 {
                    // Disk full or the file is gone: drop this chunk rather than block
                    // the task on a full pipe.
                    break;
                }
                written += w as usize;
            }
            sizes[i] += written as u64;
        }
    }
    libc::_exit(0)
}

/// `stdout.<keep-1>` → `stdout.<keep>`, ..., `stdout` → `stdout.1`.
unsafe fn rotate(s: &Stream, keep: u32) {
    let keep = keep as usize;
    for i in (0..keep).rev() {
        libc::rename(s.names[i].as_ptr(), s.names[i + 1].as_ptr());
    }
}

unsafe fn open_append(name: &CString) -> i32 {
    libc::open(
        name.as_ptr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
        0o644,
    )
}

unsafe fn file_size(fd: i32) -> u64 {
    let mut st: libc::stat = std::mem::zeroed();
    if fd >= 0 && libc::fstat(fd, &mut st) == 0 {
        st.st_size as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn logger_writes_both_streams_and_rotates_by_size_keeping_n() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = spawn(
            dir.path(),
            Rotation {
                max_bytes: 100,
                keep: 2,
            },
        )
        .unwrap();
        let mut out = std::fs::File::from(out);
        let mut err = std::fs::File::from(err);
        err.write_all(b"oops\n").unwrap();
        // 5 chunks of 60 bytes: each write after the first would pass 100 bytes.
        for i in 0..5u8 {
            out.write_all(&[b'a' + i; 60]).unwrap();
            // Each chunk lands alone in a fresh `stdout`: the one before was rotated.
            let p = dir.path().join("stdout");
            wait_for("the chunk", || {
                std::fs::read(&p).is_ok_and(|b| b.len() == 60 && b[0] == b'a' + i)
            });
        }
        drop(out);
        drop(err);
        let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap_or_default();
        assert_eq!(read("stdout"), vec![b'e'; 60]);
        assert_eq!(read("stdout.1"), vec![b'd'; 60]);
        assert_eq!(read("stdout.2"), vec![b'c'; 60]);
        assert!(
            !dir.path().join("stdout.3").exists(),
            "only 2 rotations kept"
        );
        wait_for("stderr", || read("stderr") == b"oops\n");
    }
}
