//! aarch64 kernels: none yet; tract's own kernels run behind the portable rewrites of
//! [`crate::plan`].
