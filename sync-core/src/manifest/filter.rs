//! Which paths of a volume a pull asks for (`--path`), as operators write them.
//!
//! A pattern without a `/` matches a name at any depth (`*.csv`, `core`); a pattern with one
//! matches the whole path from the volume's root (`logs/**`, `runs/*/out.json`); `*` never
//! crosses a `/`, `**` does. An entry is selected when it or one of its folders matches, so
//! naming a folder selects everything in it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{Entry, Manifest};
use crate::path::VolumePath;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("--path {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
}

/// A set of `--path` patterns; empty selects everything.
#[derive(Debug, Clone)]
pub struct PathFilter {
    set: Option<GlobSet>,
}

impl PathFilter {
    pub fn all() -> Self {
        Self { set: None }
    }

    pub fn new(patterns: &[String]) -> Result<Self, FilterError> {
        if patterns.is_empty() {
            return Ok(Self::all());
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_matches('/');
            let bad = |reason: &str| FilterError::Pattern {
                pattern: p.clone(),
                reason: reason.to_string(),
            };
            if trimmed.is_empty() {
                return Err(bad(
                    "an empty pattern selects nothing; leave --path out to pull everything",
                ));
            }
            if trimmed.split('/').any(|c| c == "..") {
                return Err(bad("patterns stay inside the volume (no ..)"));
            }
            let full = if trimmed.contains('/') {
                trimmed.to_string()
            } else {
                format!("**/{trimmed}")
            };
            let glob = GlobBuilder::new(&full)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(&e.kind().to_string()))?;
            b.add(glob);
        }
        let set = b.build().map_err(|e| FilterError::Pattern {
            pattern: patterns.join(" "),
            reason: e.to_string(),
        })?;
        Ok(Self { set: Some(set) })
    }

    pub fn is_all(&self) -> bool {
        self.set.is_none()
    }

    /// Whether `path`, or one of its folders, matches.
    pub fn selects(&self, path: &VolumePath) -> bool {
        let Some(set) = &self.set else {
            return true;
        };
        set.is_match(path.as_str()) || path.ancestors().any(|a| set.is_match(a.as_str()))
    }

    /// [`PathFilter::selects`] for a path as a pod's own bytes, which may be no valid
    /// [`VolumePath`] (a name that is not UTF-8, a path over the limit): so that a report of
    /// what a pull leaves out names only what the pull asked for.
    pub fn selects_raw(&self, path: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Some(set) = &self.set else {
            return true;
        };
        fn as_path(b: &[u8]) -> &std::path::Path {
            std::path::Path::new(std::ffi::OsStr::from_bytes(b))
        }
        set.is_match(as_path(path))
            || path
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'/')
                .any(|(i, _)| set.is_match(as_path(&path[..i])))
    }
}

impl Manifest {
    /// The entries `filter` selects, with the folders that lead to them.
    pub fn filtered(&self, filter: &PathFilter) -> Manifest {
        if filter.is_all() {
            return self.clone();
        }
        let mut keep: Vec<Entry> = Vec::new();
        let mut dirs = std::collections::HashSet::new();
        for e in self.entries() {
            if filter.selects(&e.path) {
                for a in e.path.ancestors() {
                    dirs.insert(a);
                }
                keep.push(e.clone());
            }
        }
        for e in self.entries() {
            if e.is_dir() && dirs.contains(&e.path) && !filter.selects(&e.path) {
                keep.push(e.clone());
            }
        }
        Manifest::new(keep).expect("a subset of a valid manifest with its folders is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(paths: &[&str]) -> Manifest {
        let mut v = Vec::new();
        for p in paths {
            if let Some(d) = p.strip_suffix('/') {
                v.push(crate::manifest::tests::dir(d));
            } else {
                v.push(crate::manifest::tests::file(p, p.as_bytes()));
            }
        }
        Manifest::new(v).unwrap()
    }

    fn paths(m: &Manifest) -> Vec<&str> {
        m.entries().iter().map(|e| e.path.as_str()).collect()
    }

    fn f(p: &[&str]) -> PathFilter {
        PathFilter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_root() {
        let vol = m(&[
            "a.csv",
            "logs/",
            "logs/run.log",
            "logs/old/",
            "logs/old/x.log",
            "out/",
            "out/r.csv",
            "out/r.json",
        ]);
        assert_eq!(
            paths(&vol.filtered(&f(&["*.csv"]))),
            ["a.csv", "out", "out/r.csv"]
        );
        assert_eq!(
            paths(&vol.filtered(&f(&["logs/**"]))),
            ["logs", "logs/old", "logs/old/x.log", "logs/run.log"]
        );
        // `*` does not cross a folder.
        assert_eq!(
            paths(&vol.filtered(&f(&["logs/*.log"]))),
            ["logs", "logs/run.log"]
        );
        // Naming a folder selects what is in it.
        assert_eq!(
            paths(&vol.filtered(&f(&["out"]))),
            ["out", "out/r.csv", "out/r.json"]
        );
        assert_eq!(vol.filtered(&PathFilter::all()).root(), vol.root());
    }

    #[test]
    fn raw_paths_match_like_checked_ones() {
        let csv = f(&["*.csv"]);
        assert!(csv.selects_raw(b"out/r\xe9.csv"));
        assert!(!csv.selects_raw(b"out/r\xe9.bin"));
        let logs = f(&["logs"]);
        assert!(logs.selects_raw(b"logs/\xff/deep"));
        assert!(!logs.selects_raw(b"other/\xff"));
        assert!(PathFilter::all().selects_raw(b"\xff"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for bad in ["", "/", "../etc/*", "a/../../b", "logs/[z-a]"] {
            let e = PathFilter::new(&[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains("--path"), "{bad}: {e}");
        }
    }
}
