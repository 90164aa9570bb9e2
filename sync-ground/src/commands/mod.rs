//! One file per subcommand: each parses what its flags name, does the work through
//! `sync_core`, and hands what came of it to `output`. Each exposes `run`.

pub mod ls;
pub mod pass;
pub mod pull;
pub mod push;
pub mod rm;
pub mod status;

use sync_core::path::{PathError, VolumePath};

/// A folder of the volume as an operator writes it (`/app/`, `app`, `/` or nothing for the
/// root): slashes around it do not count.
fn volume_folder(arg: Option<&str>) -> Result<Option<VolumePath>, PathError> {
    arg.map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .map(VolumePath::new)
        .transpose()
}
