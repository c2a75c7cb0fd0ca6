//! alike-fs against images made by the real tools (mke2fs, debugfs,
//! sgdisk, parted): one binary, a module per subject.

mod integration {
    pub(crate) mod util;

    mod ext;
    mod hostile;
    mod part;
    mod smoke;
}
