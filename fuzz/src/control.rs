//! The control-socket protocol (placeholder until the target is written).

/// Seed inputs.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    Vec::new()
}
