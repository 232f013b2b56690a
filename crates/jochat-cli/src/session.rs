//! The saved session: the token and who it belongs to, in a file only its owner can read.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

/// What `jochat login` keeps for the next commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// The account.
    pub username: String,
    /// The session token (a secret).
    pub token: String,
    /// The servers the session was opened on.
    pub servers: Vec<String>,
}

/// The default session file: `<config dir>/jochat/session.json`.
///
/// # Errors
/// When the platform has no configuration folder.
pub fn default_path() -> anyhow::Result<PathBuf> {
    let base =
        dirs::config_dir().ok_or_else(|| anyhow!("no configuration folder: use --session-file"))?;
    Ok(base.join("jochat").join("session.json"))
}

/// Writes `session` to `path`, readable and writable by its owner only (folder 0700, file 0600).
///
/// # Errors
/// When the folder or file cannot be written.
pub fn save(path: &Path, session: &SavedSession) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // Write beside the target, then rename, so a crash never leaves half a file.
    let temporary = path.with_extension("json.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    #[cfg(unix)]
    {
        // `mode` applies only when the file is created; an old file keeps its bits.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(serde_json::to_string_pretty(session)?.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads the session saved at `path`.
///
/// # Errors
/// "not logged in" when there is none; a parse error when the file is damaged.
pub fn load(path: &Path) -> anyhow::Result<SavedSession> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(anyhow!("not logged in: run `jochat login USER`"));
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged: log in again", path.display()))
}

/// Deletes the saved session, if any.
///
/// # Errors
/// When the file exists but cannot be removed.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("session.json");
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .starts_with("not logged in"));
        let session = SavedSession {
            username: "alice".into(),
            token: "t0k3n".into(),
            servers: vec!["127.0.0.1:5001".into()],
        };
        save(&path, &session).unwrap();
        assert_eq!(load(&path).unwrap(), session);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(path.parent().unwrap())
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
        }
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(load(&path).is_err());
    }
}
