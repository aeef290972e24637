//! The line of phases a run walks (see `shared/DESIGN.md`): context, tags, source, build, push,
//! chart, deploy, verify. Each phase is a function of the values before it: it takes what it
//! needs as arguments and returns its value; it calls clients, never another phase. `run`,
//! `build`, `deploy` and `plan` walk the same line; `plan` replaces the side-effecting steps with
//! "what would happen".
