//! Token files in the data directory: `token` (admin, today's cluster token),
//! `token.read`, `token.deploy` and `token.agent`, one token per line (blank lines and
//! `#` comments ignored), so a role can have several tokens while one is rotated out.
//!
//! Files per role rather than one `tokens.toml`: an operator hands out a role by
//! copying one file (`scp token.agent host:`), and a process that only needs one role
//! (an agent) is given only that file. The trade-off is four files to keep at mode
//! 0600 instead of one; every file is created with that mode (never widened after
//! writing, so there is no moment when it is readable by others) and a wider mode on an
//! existing file is warned about.

use anyhow::{bail, Context};
use protocol::auth::{Keyring, Role};
use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::warn;

/// The file holding `role`'s tokens in `dir`.
pub fn path(dir: &Path, role: Role) -> PathBuf {
    protocol::defaults::token_path(dir, role)
}

/// 256 bits from the thread-local CSPRNG (ChaCha12, seeded from the OS), as hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokens in a token file's text.
fn parse(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The first token of `role` in `dir`, made (and written with mode 0600) when the file
/// is missing or holds none.
pub fn ensure(dir: &Path, role: Role) -> anyhow::Result<String> {
    let path = path(dir, role);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_wide(&path);
            if let Some(t) = parse(&text).first() {
                return Ok(t.to_string());
            }
            bail!(
                "{} holds no token: expected one token per line; delete it to have a new one made",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = generate();
    create_private(&path, &format!("{token}\n"))?;
    Ok(token)
}

/// Writes a new file readable and writable by its owner only, from its creation on.
pub fn create_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn warn_if_wide(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{mode:o}"), "token file is readable by others: expected mode 600");
            }
        }
    }
}

/// Every token of every role found in `dir` (missing files are no tokens).
pub fn load(dir: &Path) -> anyhow::Result<Keyring> {
    let mut k = Keyring::new();
    for role in Role::ALL {
        let path = path(dir, role);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                warn_if_wide(&path);
                for t in parse(&text) {
                    k.add(t, role);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: the token came from a hash seed and was written before its mode was set.
    #[test]
    fn tokens_are_random_and_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), Role::Admin).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(ensure(dir.path(), Role::Admin).unwrap(), a, "kept");
        let r = ensure(dir.path(), Role::Read).unwrap();
        assert_ne!(r, a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for role in [Role::Admin, Role::Read] {
                let mode = std::fs::metadata(path(dir.path(), role))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{role}");
            }
        }
        let k = load(dir.path()).unwrap();
        assert_eq!(k.role_of(&a), Some(Role::Admin));
        assert_eq!(k.role_of(&r), Some(Role::Read));
        assert_eq!(k.count(Role::Agent), 0);
    }

    #[test]
    fn files_hold_several_tokens_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        create_private(
            &path(dir.path(), Role::Agent),
            "# rotated 2026-12\nold\n\nnew\n",
        )
        .unwrap();
        let k = load(dir.path()).unwrap();
        assert_eq!(k.role_of("old"), Some(Role::Agent));
        assert_eq!(k.role_of("new"), Some(Role::Agent));
        assert_eq!(k.role_of("# rotated 2026-12"), None);
        create_private(&path(dir.path(), Role::Read), "\n# none\n").unwrap();
        let err = ensure(dir.path(), Role::Read).unwrap_err().to_string();
        assert!(err.contains("holds no token"), "{err}");
    }
}
