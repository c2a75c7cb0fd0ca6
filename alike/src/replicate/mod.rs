//! Replication (Enhanced Replication): a VM's disks onto a replica,
//! sending only what the replica lacks. Needs no store (a store only for
//! seeding and one-pass backup and replication).

mod job;

pub use job::{
    DEFAULT_PORT, Flow, JOB_VERSION, JobPassword, JobReplica, JobRole, JobSecret, JobSeed, JobSource, JobStore,
    MAX_JOB_BYTES, MAX_KEEP, ReplicationJob,
};
