//! # alike-hyperv
//!
//! The Hyper-V adapter: VHDX/AVHDX format, host control and a simulator.
//! Not written yet (issue 4); the crate exists so the workspace has its final
//! shape. It depends on `alike-core` only.
