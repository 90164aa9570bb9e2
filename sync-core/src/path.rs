//! Checked names. A path or pod name that arrives from the wire, the command line or a directory
//! scan becomes a [`VolumePath`] or [`PodName`] only after every rule below holds, so code that
//! touches a volume never sees `..`, an absolute path, a NUL or an over-long name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest single name, as on Linux (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest whole path inside a volume (`PATH_MAX` less the room the volume root needs).
pub const MAX_PATH_BYTES: usize = 3840;
/// Longest pod name: it becomes one directory name and appears in every log line.
pub const MAX_POD_NAME_BYTES: usize = 63;
/// Names starting with this are the engine's own temporary files inside a volume; no entry may
/// use it, so a pod's file can never be mistaken for, or clobbered as, one of them.
pub const TEMP_PREFIX: &str = ".~sync.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// the path is empty
    #[error("the path is empty")]
    Empty,
    /// absolute paths are refused
    #[error("{0:?}: absolute paths are refused; paths are relative to the pod volume")]
    Absolute(String),
    /// a `..` or `.` component
    #[error("{0:?}: '.' and '..' components are refused")]
    DotComponent(String),
    /// an empty component (`a//b`, trailing slash)
    #[error("{0:?}: empty path component")]
    EmptyComponent(String),
    /// a NUL byte
    #[error("{0:?}: NUL byte in path")]
    Nul(String),
    /// a name over 255 bytes
    #[error("a name of {len} bytes is over the limit of {MAX_NAME_BYTES}")]
    NameTooLong { len: usize },
    /// a path over the limit
    #[error("a path of {len} bytes is over the limit of {MAX_PATH_BYTES}")]
    PathTooLong { len: usize },
    /// not UTF-8 (the name as [`escape_bytes`] shows it)
    #[error("{0}: file names must be UTF-8")]
    NotUtf8(String),
    /// a name reserved for the engine's temporary files
    #[error("{0:?}: names starting with {TEMP_PREFIX:?} are reserved for the sync engine")]
    Reserved(String),
    /// a symlink whose target leaves the volume
    #[error("symlink {link:?} -> {target:?} points outside the volume")]
    SymlinkEscapes { link: String, target: String },
    /// a pod name that is not a plain name
    #[error(
        "{0:?} is not a valid pod name: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadPodName(String),
}

/// A relative path inside a pod volume, '/'-separated, every rule of this module checked.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumePath(String);

/// Paths order component by component (`a` < `a/b` < `a-b`), so a folder's whole subtree is one
/// contiguous run of a sorted manifest and a parent always precedes its children.
impl Ord for VolumePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |b: &u8| if *b == b'/' { 0 } else { *b };
        self.0
            .as_bytes()
            .iter()
            .map(key)
            .cmp(other.0.as_bytes().iter().map(key))
    }
}

impl PartialOrd for VolumePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl VolumePath {
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        check_path(&s)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The enclosing folder, `None` at the top of the volume.
    pub fn parent(&self) -> Option<VolumePath> {
        self.0
            .rfind('/')
            .map(|i| VolumePath(self.0[..i].to_string()))
    }

    /// `self/child`; the result is checked like any other path.
    pub fn join(&self, child: &str) -> Result<VolumePath, PathError> {
        VolumePath::new(format!("{}/{}", self.0, child))
    }

    /// True when `self` is `other` or lies below it.
    pub fn is_within(&self, other: &VolumePath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// Folders from the top down to (not including) this path: `a`, `a/b` for `a/b/c`.
    pub fn ancestors(&self) -> impl Iterator<Item = VolumePath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| VolumePath(self.0[..i].to_string()))
    }

    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }
}

impl TryFrom<String> for VolumePath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        Self::new(s)
    }
}

impl From<VolumePath> for String {
    fn from(p: VolumePath) -> String {
        p.0
    }
}

impl fmt::Debug for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_path(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.contains('\0') {
        return Err(PathError::Nul(s.to_string()));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(s.to_string()));
    }
    if s.len() > MAX_PATH_BYTES {
        return Err(PathError::PathTooLong { len: s.len() });
    }
    for name in s.split('/') {
        check_name(s, name)?;
    }
    Ok(())
}

fn check_name(path: &str, name: &str) -> Result<(), PathError> {
    match name {
        "" => Err(PathError::EmptyComponent(path.to_string())),
        "." | ".." => Err(PathError::DotComponent(path.to_string())),
        _ if name.len() > MAX_NAME_BYTES => Err(PathError::NameTooLong { len: name.len() }),
        _ if name.starts_with(TEMP_PREFIX) => Err(PathError::Reserved(path.to_string())),
        _ => Ok(()),
    }
}

/// Turns an OS file name into a checked component, for scans of real folders.
pub fn name_from_os(name: &std::ffi::OsStr) -> Result<&str, PathError> {
    use std::os::unix::ffi::OsStrExt;
    name.to_str()
        .ok_or_else(|| PathError::NotUtf8(escape_bytes(name.as_bytes())))
}

/// A name a pod (or anyone) chose, made safe to print on a terminal or in a log line:
/// printable characters as they are; control and invisible formatting characters (a newline
/// that would forge a line, a right-to-left override) as Rust escapes them (`\n`, `\u{202e}`);
/// bytes that are not UTF-8 as `\xNN`; and a backslash doubled, so that no two names look alike.
pub fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        escape_into(chunk.valid(), &mut out);
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape_bytes`] of a name known to be UTF-8.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    escape_into(name, &mut out);
    out
}

fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            // Quotes print as they are: the escaped form is not a Rust literal, only unambiguous.
            '"' | '\'' => out.push(c),
            c if hidden(c) => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
}

/// Whether Rust's `Debug` would escape `c` inside a string (controls, unassigned and format
/// characters), not counting a combining mark, which prints fine after a letter.
fn hidden(c: char) -> bool {
    let mut buf = [0u8; 5];
    buf[0] = b'a';
    let len = 1 + c.encode_utf8(&mut buf[1..]).len();
    let s = std::str::from_utf8(&buf[..len]).expect("a letter and one char");
    s.escape_debug().count() != s.chars().count()
}

/// Checks that a symlink at `link` with text `target` resolves inside the volume, lexically: the
/// walk from the link's folder may never climb above the volume root. Absolute targets are refused
/// because inside the pod's container they would name the container's own files.
pub fn check_symlink_target(link: &VolumePath, target: &str) -> Result<(), PathError> {
    let escapes = || PathError::SymlinkEscapes {
        link: link.to_string(),
        target: target.to_string(),
    };
    if target.is_empty() || target.contains('\0') {
        return Err(escapes());
    }
    if target.starts_with('/') {
        return Err(escapes());
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(PathError::PathTooLong { len: target.len() });
    }
    let mut depth = link.depth() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(escapes());
                }
            }
            name if name.len() > MAX_NAME_BYTES => {
                return Err(PathError::NameTooLong { len: name.len() });
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// The name of a pod, and so of its volume folder: a plain name, never a path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodName(String);

impl PodName {
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= MAX_POD_NAME_BYTES
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(PathError::BadPodName(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PodName {
    fn default() -> Self {
        Self("default".to_string())
    }
}

impl TryFrom<String> for PodName {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        Self::new(s)
    }
}

impl From<PodName> for String {
    fn from(p: PodName) -> String {
        p.0
    }
}

impl fmt::Debug for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            ".~sync.tmp",
            "a/.~sync.1",
        ] {
            assert!(VolumePath::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            VolumePath::new("x".repeat(256)),
            Err(PathError::NameTooLong { len: 256 })
        ));
        assert!(VolumePath::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn plain_paths_are_accepted() {
        for good in ["a", "a/b.c", "..a", "a../b", ".hidden/x", "ünï/cödé"] {
            assert!(VolumePath::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn paths_from_the_wire_are_checked_on_decode() {
        let bytes = postcard::to_stdvec(&"../../etc/shadow".to_string()).unwrap();
        assert!(postcard::from_bytes::<VolumePath>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&"../pod-b".to_string()).unwrap();
        assert!(postcard::from_bytes::<PodName>(&bytes).is_err());
    }

    #[test]
    fn pod_names_are_plain_names() {
        for bad in ["", "..", ".", "a/b", "-x", ".x", "a b", &"p".repeat(64)] {
            assert!(PodName::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["default", "experiment-1", "p.2_x", "A9"] {
            assert!(PodName::new(good).is_ok());
        }
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        let link = VolumePath::new("a/b/link").unwrap();
        assert!(check_symlink_target(&link, "c").is_ok());
        assert!(check_symlink_target(&link, "../c").is_ok());
        assert!(check_symlink_target(&link, "../../c").is_ok());
        assert!(check_symlink_target(&link, "../../../c").is_err());
        assert!(check_symlink_target(&link, "/etc").is_err());
        assert!(check_symlink_target(&link, "x/../../../../y").is_err());
        let top = VolumePath::new("link").unwrap();
        assert!(check_symlink_target(&top, "..").is_err());
        assert!(check_symlink_target(&top, "").is_err());
    }

    #[test]
    fn subtrees_sort_contiguously() {
        let mut v: Vec<VolumePath> = ["a-b", "a/b", "a", "a/c", "a.b", "b"]
            .into_iter()
            .map(|s| VolumePath::new(s).unwrap())
            .collect();
        v.sort();
        let s: Vec<&str> = v.iter().map(|p| p.as_str()).collect();
        assert_eq!(s, ["a", "a/b", "a/c", "a-b", "a.b", "b"]);
    }

    #[test]
    fn escaped_names_cannot_forge_lines_or_hide_bytes() {
        assert_eq!(escape("plain name-1.csv"), "plain name-1.csv");
        assert_eq!(escape("ünï/cödé it's \"q\""), "ünï/cödé it's \"q\"");
        assert_eq!(escape("a\nfile 0 dir"), "a\\nfile 0 dir");
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        // A combining accent stays (a name in NFD prints as it reads).
        assert_eq!(escape("e\u{301}"), "e\u{301}");
        assert_eq!(
            escape_bytes(b"caf\xe9-\xff\xfe.txt"),
            "caf\\xe9-\\xff\\xfe.txt"
        );
        assert_eq!(escape_bytes("ok é".as_bytes()), "ok é");
        // What is escaped differs from every name that is not.
        assert_ne!(escape_bytes(b"\\xe9"), escape_bytes(b"\xe9"));
    }

    #[test]
    fn within_and_ancestors() {
        let p = VolumePath::new("a/b/c").unwrap();
        let a = VolumePath::new("a").unwrap();
        assert!(p.is_within(&a));
        assert!(!VolumePath::new("ab/c").unwrap().is_within(&a));
        let anc: Vec<_> = p.ancestors().map(|x| x.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.name(), "c");
    }
}
