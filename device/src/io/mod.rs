//! Frames in and signals out: [`source`] (stdin, files, folders, and [`v4l2`] cameras) and
//! [`gpio`] (LED and button through embedded-hal).

pub mod gpio;
pub mod source;
pub mod v4l2;
