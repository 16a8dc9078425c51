//! Saved searches: a name for a search page's query, time range, order and columns,
//! listed on the search page for everyone who may read (Kibana's saved searches).
//!
//! They live with the web process, in one small JSON file (`<data_dir>/web/
//! saved-searches.json` in `sandtrail up`, the `--data-dir` of a standalone `web`),
//! rewritten whole and atomically on each change, on the blocking pool. Not in the
//! indexer: the UI calls it with a read token, and a saved search is the UI's object,
//! not a log record. The trade-off, as for sign-in sessions: two web processes behind
//! one balancer keep two lists; in exchange there is no new API on the indexer and no
//! wider credential for the UI. A standalone `web` without a data dir keeps the list in
//! memory (lost at restart) and says so at start.
//!
//! A search is stored as the parameters that reproduce it, each checked as the search
//! page checks it, so opening one is following a link. The list is capped
//! ([`MAX_SAVED`], [`MAX_QUERY`]) so the file and the page stay small.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most saved searches kept; one more is refused until one is deleted.
pub const MAX_SAVED: usize = 200;
/// Longest name, in characters.
pub const MAX_NAME: usize = 64;
/// Longest query, in bytes (a query the page can show; the URL carries it too).
pub const MAX_QUERY: usize = 4096;

/// One saved search: its name and the search page's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSearch {
    pub name: String,
    /// `q`, `range` or `start`/`end`, `sort`, `cols` as the page's URL has them,
    /// in that order, empty ones left out.
    pub params: Vec<(String, String)>,
    pub saved_at: DateTime<Utc>,
}

impl SavedSearch {
    /// The search page's URL for it.
    pub fn href(&self) -> String {
        let params: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        crate::render::href("/", &params)
    }

    /// Its query (`q`), for the list's tooltip.
    pub fn query(&self) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == "q")
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The file as written: a version, so a later layout can tell old files apart.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    searches: Vec<SavedSearch>,
}

const FILE_VERSION: u32 = 1;

/// A saved search's name, trimmed: 1 to [`MAX_NAME`] characters, letters, digits,
/// spaces and `-_.:()/#`, so it reads the same in the list, a tooltip and a log line.
pub fn valid_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "-_.:()/#".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::BadParam {
            name: "name",
            value: raw.to_string(),
            expected: "1 to 64 letters, digits, spaces or -_.:()/#",
        })
    }
}

/// The saved searches and where they are kept.
pub struct SavedSearches {
    /// `None`: in memory only.
    path: Option<PathBuf>,
    /// Newest first. Held across the file write, so the file's order of changes is
    /// the list's.
    list: tokio::sync::Mutex<Vec<SavedSearch>>,
}

impl SavedSearches {
    /// Kept in memory only (tests, and a standalone `web` without a data dir).
    pub fn in_memory() -> SavedSearches {
        SavedSearches {
            path: None,
            list: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Kept in `path`, read now if it exists. Blocking (called at start).
    pub fn open(path: PathBuf) -> Result<SavedSearches> {
        let list = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Store(format!(
                        "{} is not a saved-search file: {e}; expected the JSON this version \
                         writes (move it away to start with none)",
                        path.display()
                    ))
                })?;
                if file.version != FILE_VERSION {
                    return Err(Error::Store(format!(
                        "{} has version {}; expected {FILE_VERSION}",
                        path.display(),
                        file.version
                    )));
                }
                file.searches
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(Error::Store(format!("cannot read {}: {e}", path.display())));
            }
        };
        Ok(SavedSearches {
            path: Some(path),
            list: tokio::sync::Mutex::new(list),
        })
    }

    /// Whether changes outlive the process.
    pub fn persistent(&self) -> bool {
        self.path.is_some()
    }

    /// Every saved search, newest first.
    pub async fn list(&self) -> Vec<SavedSearch> {
        self.list.lock().await.clone()
    }

    /// Saves `search` under its name. An existing name is refused (409) unless
    /// `replace`, so that two people do not overwrite each other's by accident.
    pub async fn save(&self, search: SavedSearch, replace: bool) -> Result<()> {
        let mut list = self.list.lock().await;
        let mut next = list.clone();
        match next.iter().position(|s| s.name == search.name) {
            Some(_) if !replace => {
                return Err(Error::Conflict(format!(
                    "a saved search named {:?} exists: tick \"replace\" to overwrite it, \
                     or choose another name",
                    search.name
                )));
            }
            Some(i) => {
                next.remove(i);
            }
            None if next.len() >= MAX_SAVED => {
                return Err(Error::Conflict(format!(
                    "{MAX_SAVED} searches are saved already, the most kept: delete one first"
                )));
            }
            None => {}
        }
        next.insert(0, search);
        self.write(&next).await?;
        *list = next;
        Ok(())
    }

    /// Deletes the search named `name`; an unknown name is a 400 naming it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let mut list = self.list.lock().await;
        let Some(i) = list.iter().position(|s| s.name == name) else {
            return Err(Error::BadParam {
                name: "name",
                value: name.to_string(),
                expected: "the name of a saved search",
            });
        };
        let mut next = list.clone();
        next.remove(i);
        self.write(&next).await?;
        *list = next;
        Ok(())
    }

    async fn write(&self, list: &[SavedSearch]) -> Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&File {
            version: FILE_VERSION,
            searches: list.to_vec(),
        })
        .map_err(|e| Error::Internal(format!("encoding saved searches: {e}")))?;
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            protocol::fs::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Error::Internal(format!("saved-search write task failed: {e}")))?
        .map_err(Error::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(name: &str, q: &str) -> SavedSearch {
        SavedSearch {
            name: name.to_string(),
            params: vec![("q".into(), q.into()), ("range".into(), "1h".into())],
            saved_at: Utc::now(),
        }
    }

    #[test]
    fn names_are_checked_and_trimmed() {
        assert_eq!(
            valid_name("  fib errors (prod) ").unwrap(),
            "fib errors (prod)"
        );
        assert_eq!(valid_name("élan #2").unwrap(), "élan #2");
        for bad in ["", "   ", "a<b", "x\"y", "tab\there", &"n".repeat(65)] {
            let e = valid_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid name") && e.contains("expected"), "{e}");
        }
        assert!(valid_name(&"n".repeat(64)).is_ok());
    }

    #[test]
    fn href_reproduces_the_search() {
        let s = search("x", "app:fib level:error");
        assert_eq!(s.href(), "/?q=app%3Afib%20level%3Aerror&range=1h");
        assert_eq!(s.query(), "app:fib level:error");
    }

    #[tokio::test]
    async fn saves_list_newest_first_replace_only_when_asked_and_delete() {
        let s = SavedSearches::in_memory();
        s.save(search("a", "1"), false).await.unwrap();
        s.save(search("b", "2"), false).await.unwrap();
        let names: Vec<String> = s.list().await.into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["b", "a"]);
        let e = s.save(search("a", "3"), false).await.unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::CONFLICT);
        assert!(e.to_string().contains("\"a\""), "{e}");
        assert_eq!(s.list().await[1].query(), "1", "not overwritten");
        s.save(search("a", "3"), true).await.unwrap();
        let list = s.list().await;
        assert_eq!((list[0].name.as_str(), list[0].query()), ("a", "3"));
        assert_eq!(list.len(), 2);
        s.delete("b").await.unwrap();
        assert_eq!(s.list().await.len(), 1);
        let e = s.delete("b").await.unwrap_err().to_string();
        assert!(e.contains("\"b\""), "{e}");
    }

    #[tokio::test]
    async fn the_count_is_capped() {
        let s = SavedSearches::in_memory();
        for i in 0..MAX_SAVED {
            s.save(search(&format!("s{i}"), "q"), false).await.unwrap();
        }
        let e = s.save(search("one more", "q"), false).await.unwrap_err();
        assert!(e.to_string().contains("delete one first"), "{e}");
        // Replacing one at the cap is still allowed.
        s.save(search("s0", "new"), true).await.unwrap();
        assert_eq!(s.list().await.len(), MAX_SAVED);
    }

    #[tokio::test]
    async fn the_file_survives_a_restart_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web").join("saved-searches.json");
        let s = SavedSearches::open(path.clone()).unwrap();
        assert!(s.persistent());
        s.save(search("kept", "app:fib"), false).await.unwrap();
        s.save(search("gone", "x"), false).await.unwrap();
        s.delete("gone").await.unwrap();
        drop(s);
        let again = SavedSearches::open(path.clone()).unwrap();
        let list = again.list().await;
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].name.as_str(), list[0].query()),
            ("kept", "app:fib")
        );

        std::fs::write(&path, b"{not json").unwrap();
        let e = SavedSearches::open(path.clone()).err().unwrap().to_string();
        assert!(e.contains("saved-searches.json"), "{e}");
    }
}
