//! The vm-accel facade for VMMs: one place to discover, prepare, attach, detach and health-check accelerators.
