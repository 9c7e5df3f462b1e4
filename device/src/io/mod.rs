//! Frames in and signals out: [`source`] (stdin, files, folders, and [`v4l2`] cameras, whose
//! modes [`cameras`] lists and chooses), [`child`] (video files, streams and board cameras
//! through child processes), [`decode`] (image files and JPEG frames within limits) and
//! [`gpio`] (LED and button through embedded-hal).

pub mod cameras;
pub mod child;
pub mod decode;
pub mod gpio;
pub mod source;
pub mod v4l2;
