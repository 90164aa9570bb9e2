pub mod apply;
pub mod delta;
pub mod ground;
pub mod id;
pub mod link;
pub mod manifest;
pub mod object;
pub mod onboard;
pub mod pack;
pub mod path;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;
pub mod volume;
pub mod window;
pub mod wire;
