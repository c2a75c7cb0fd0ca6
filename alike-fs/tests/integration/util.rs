//! Fixtures shared with the facade's tests (`alike_testing::tree`), and
//! what only these tests need.

use std::path::Path;
use std::sync::Arc;

use alike_fs::{BlockDevice, FileDevice};
pub(crate) use alike_testing::tree::{allocated, assert_same_tree, build_tree, debugfs_w, mkfs, need, run, tool, walk};

pub(crate) fn dev(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path).unwrap())
}
