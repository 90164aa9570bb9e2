pub mod id;
pub mod manifest;
pub mod path;
