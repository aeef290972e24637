//! One function per command, below `cli/` (which parses) and above `phases/` (the line).

pub mod event;
