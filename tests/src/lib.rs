//! End-to-end and parity tests across crates live in tests/tests/.
