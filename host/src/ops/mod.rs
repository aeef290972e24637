//! One function per command, below the command line and above the phases.

pub mod plugin_oci;
