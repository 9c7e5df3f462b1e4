//! Frames in and signals out: [`source`] (stdin, files, folders, and [`v4l2`] cameras),
//! [`decode`] (image files and JPEG frames within limits) and [`gpio`] (LED and button through
//! embedded-hal).

pub mod child;
pub mod decode;
pub mod gpio;
pub mod source;
pub mod v4l2;
