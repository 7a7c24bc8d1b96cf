//! Switchyard's load tool (placeholder until the load tool lands).
