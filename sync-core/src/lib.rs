pub mod delta;
pub mod id;
pub mod manifest;
pub mod pack;
pub mod path;
pub mod state;
pub mod wire;
