//! Minimal V4L2 video capture (memory-mapped streaming I/O) on raw ioctls: no bindgen, no
//! libclang. The structures are the kernel's UAPI layouts for 64-bit Linux (identical on
//! x86_64 and aarch64); their sizes are checked at compile time.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

pub(crate) const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
pub(crate) const READ: u32 = 2;
pub(crate) const WRITE: u32 = 1;

pub const VIDIOC_QUERYCAP: u32 = ioc(READ, 0, std::mem::size_of::<Capability>());
pub const VIDIOC_S_FMT: u32 = ioc(READ | WRITE, 5, std::mem::size_of::<Format>());
pub const VIDIOC_REQBUFS: u32 = ioc(READ | WRITE, 8, std::mem::size_of::<RequestBuffers>());
pub const VIDIOC_QUERYBUF: u32 = ioc(READ | WRITE, 9, std::mem::size_of::<Buffer>());
pub const VIDIOC_QBUF: u32 = ioc(READ | WRITE, 15, std::mem::size_of::<Buffer>());
pub const VIDIOC_DQBUF: u32 = ioc(READ | WRITE, 17, std::mem::size_of::<Buffer>());
pub const VIDIOC_STREAMON: u32 = ioc(WRITE, 18, 4);
pub const VIDIOC_STREAMOFF: u32 = ioc(WRITE, 19, 4);

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x1;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;

pub const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | (c[1] as u32) << 8 | (c[2] as u32) << 16 | (c[3] as u32) << 24
}
pub const PIX_FMT_YUYV: u32 = fourcc(b"YUYV");
pub const PIX_FMT_MJPEG: u32 = fourcc(b"MJPG");
pub const PIX_FMT_RGB24: u32 = fourcc(b"RGB3");
pub const PIX_FMT_GREY: u32 = fourcc(b"GREY");

/// Bytes per pixel of the uncompressed formats (None: compressed, MJPEG).
fn bytes_per_pixel(pixelformat: u32) -> Option<u32> {
    match pixelformat {
        PIX_FMT_YUYV => Some(2),
        PIX_FMT_RGB24 => Some(3),
        PIX_FMT_GREY => Some(1),
        _ => None,
    }
}

/// Copies `height` rows of `row_bytes` from `src`, whose rows start every `stride` bytes (the
/// driver's `bytesperline`: cameras may pad each row), into `out`, packed.
pub fn copy_rows(src: &[u8], height: usize, row_bytes: usize, stride: usize, out: &mut Vec<u8>) -> Result<()> {
    let stride = if stride == 0 { row_bytes } else { stride };
    ensure!(stride >= row_bytes, "bytesperline {stride} is less than a row of {row_bytes} bytes");
    let need = if height == 0 { 0 } else { (height - 1) * stride + row_bytes };
    ensure!(src.len() >= need, "the frame has {} bytes, {height} rows of bytesperline {stride} need {need}", src.len());
    out.clear();
    if stride == row_bytes {
        out.extend_from_slice(&src[..need]);
    } else {
        out.reserve(height * row_bytes);
        for row in src.chunks(stride).take(height) {
            out.extend_from_slice(&row[..row_bytes]);
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
    pub colorspace: u32,
    pub priv_: u32,
    pub flags: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
    pub xfer_func: u32,
}

/// `struct v4l2_format`: the union is 200 bytes, 8-byte aligned (it holds pointers).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Format {
    type_: u32,
    _pad: u32,
    pix: PixFormat,
    _rest: [u8; 200 - 48],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: [i64; 2],
    timecode: [u32; 4],
    sequence: u32,
    memory: u32,
    /// union { u32 offset; unsigned long userptr; ... }: offset in the low half (little-endian).
    m: u64,
    length: u32,
    reserved2: u32,
    request_fd: u32,
}

const _: () = assert!(std::mem::size_of::<Capability>() == 104);
const _: () = assert!(std::mem::size_of::<Format>() == 208);
const _: () = assert!(std::mem::size_of::<RequestBuffers>() == 20);
const _: () = assert!(std::mem::size_of::<Buffer>() == 88);

pub(crate) fn xioctl<T>(fd: i32, request: u32, arg: &mut T) -> std::io::Result<()> {
    loop {
        // SAFETY: `arg` is a live, properly sized #[repr(C)] struct for this request.
        let r = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
        if r != -1 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// An open, streaming capture device.
pub struct Camera {
    path: PathBuf,
    fd: OwnedFd,
    buffers: Vec<Mapping>,
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    /// Bytes from one row's start to the next (the driver's `bytesperline`; 0: packed).
    pub bytesperline: u32,
    /// Time to wait for a frame before calling the camera gone.
    pub timeout_ms: i32,
}

// The raw pointers only refer to our own mmapped buffers.
unsafe impl Send for Camera {}

impl Camera {
    /// Opens `path`, sets `width` x `height` in `pixelformat`, maps 4 buffers and starts streaming.
    pub fn open(path: &Path, width: u32, height: u32, pixelformat: u32) -> Result<Camera> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .context("device path contains a NUL byte")?;
        // SAFETY: plain open(2) on a NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot open camera {}", path.display()));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        // SAFETY: all-zero bytes are valid for these plain-data structs.
        let mut cap: Capability = unsafe { std::mem::zeroed() };
        xioctl(f, VIDIOC_QUERYCAP, &mut cap)
            .with_context(|| format!("{} is not a V4L2 device", path.display()))?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 || caps & CAP_STREAMING == 0 {
            bail!(
                "{} cannot stream video capture (capabilities {caps:#x})",
                path.display()
            );
        }
        // SAFETY: as above.
        let mut fmt: Format = unsafe { std::mem::zeroed() };
        fmt.type_ = BUF_TYPE_VIDEO_CAPTURE;
        fmt.pix.width = width;
        fmt.pix.height = height;
        fmt.pix.pixelformat = pixelformat;
        fmt.pix.field = 1; // V4L2_FIELD_NONE
        xioctl(f, VIDIOC_S_FMT, &mut fmt)
            .with_context(|| format!("{}: cannot set format {width}x{height}", path.display()))?;
        if fmt.pix.pixelformat != pixelformat {
            let got = fmt.pix.pixelformat.to_le_bytes();
            bail!(
                "{}: the camera does not offer the requested pixel format (it proposes {}); try another --format",
                path.display(),
                String::from_utf8_lossy(&got)
            );
        }
        let mut req = RequestBuffers {
            count: 4,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..Default::default()
        };
        xioctl(f, VIDIOC_REQBUFS, &mut req)
            .with_context(|| format!("{}: cannot allocate capture buffers", path.display()))?;
        if req.count < 2 {
            bail!(
                "{}: the driver gave {} buffer(s), need at least 2",
                path.display(),
                req.count
            );
        }
        let mut buffers = Vec::new();
        for index in 0..req.count {
            let mut buf = Buffer {
                index,
                type_: BUF_TYPE_VIDEO_CAPTURE,
                memory: MEMORY_MMAP,
                ..Default::default()
            };
            xioctl(f, VIDIOC_QUERYBUF, &mut buf)
                .with_context(|| format!("{}: QUERYBUF", path.display()))?;
            let offset = (buf.m & 0xffff_ffff) as libc::off_t;
            // SAFETY: mapping a driver buffer at the offset it gave us.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    buf.length as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f,
                    offset,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("{}: cannot map buffer {index}", path.display()));
            }
            buffers.push(Mapping {
                ptr,
                len: buf.length as usize,
            });
            xioctl(f, VIDIOC_QBUF, &mut buf)
                .with_context(|| format!("{}: QBUF", path.display()))?;
        }
        let mut ty = BUF_TYPE_VIDEO_CAPTURE as i32;
        xioctl(f, VIDIOC_STREAMON, &mut ty)
            .with_context(|| format!("{}: cannot start streaming", path.display()))?;
        Ok(Camera {
            path: path.to_path_buf(),
            fd,
            buffers,
            width: fmt.pix.width,
            height: fmt.pix.height,
            pixelformat,
            bytesperline: fmt.pix.bytesperline,
            timeout_ms: 2000,
        })
    }

    /// Waits for the next frame and copies its bytes into `out`: an uncompressed frame as packed
    /// rows (the padding of `bytesperline` dropped), an MJPEG frame as the driver filled it.
    pub fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let f = self.fd.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd: f,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, self.timeout_ms) };
        if r < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{}: poll", self.path.display()));
        }
        if r == 0 {
            bail!(
                "{}: no frame within {} ms",
                self.path.display(),
                self.timeout_ms
            );
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            bail!(
                "{}: the device reported an error (unplugged?)",
                self.path.display()
            );
        }
        let mut buf = Buffer {
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..Default::default()
        };
        xioctl(f, VIDIOC_DQBUF, &mut buf)
            .with_context(|| format!("{}: cannot dequeue a frame", self.path.display()))?;
        let m = self
            .buffers
            .get(buf.index as usize)
            .context("driver returned an unknown buffer index")?;
        let n = (buf.bytesused as usize).min(m.len);
        // SAFETY: the driver filled `bytesused` bytes of this mapping and hands it to us until QBUF.
        let data = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, n) };
        let copied = match bytes_per_pixel(self.pixelformat) {
            Some(bpp) => copy_rows(
                data,
                self.height as usize,
                (self.width * bpp) as usize,
                self.bytesperline as usize,
                out,
            )
            .with_context(|| format!("{}: frame {}", self.path.display(), buf.sequence)),
            None => {
                out.clear();
                out.extend_from_slice(data);
                Ok(())
            }
        };
        // Requeued whatever the copy said, so the driver keeps its buffers.
        xioctl(f, VIDIOC_QBUF, &mut buf)
            .with_context(|| format!("{}: cannot requeue a buffer", self.path.display()))?;
        copied
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let mut ty = BUF_TYPE_VIDEO_CAPTURE as i32;
        let _ = xioctl(self.fd.as_raw_fd(), VIDIOC_STREAMOFF, &mut ty);
        self.buffers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from <linux/videodev2.h> on 64-bit Linux.
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(PIX_FMT_YUYV, 0x5659_5559);
        assert_eq!(PIX_FMT_MJPEG, 0x4750_4a4d);
    }

    #[test]
    fn padded_rows_are_copied_without_their_padding() {
        // 3 rows of 4 YUYV pixels (8 bytes) in rows of 12 (bytesperline), as cameras that align
        // rows deliver them; the padding bytes are 0xEE.
        let (w, h, stride) = (4usize, 3usize, 12usize);
        let row = w * 2;
        let mut src = vec![0xEEu8; stride * h];
        for y in 0..h {
            for x in 0..row {
                src[y * stride + x] = (y * 16 + x) as u8;
            }
        }
        let mut out = vec![];
        copy_rows(&src, h, row, stride, &mut out).unwrap();
        let want: Vec<u8> = (0..h).flat_map(|y| (0..row).map(move |x| (y * 16 + x) as u8)).collect();
        assert_eq!(out, want);
        // The last row need not carry its padding.
        copy_rows(&src[..stride * (h - 1) + row], h, row, stride, &mut out).unwrap();
        assert_eq!(out, want);
        // Packed (bytesperline = row, or 0 from drivers that leave it unset).
        let packed = want.clone();
        copy_rows(&packed, h, row, 0, &mut out).unwrap();
        assert_eq!(out, want);
        copy_rows(&packed, h, row, row, &mut out).unwrap();
        assert_eq!(out, want);
        // A short frame, a stride below the row: errors, not garbage.
        assert!(copy_rows(&src[..20], h, row, stride, &mut out).is_err());
        assert!(copy_rows(&src, h, row, 4, &mut out).is_err());
    }

    #[test]
    fn opening_something_that_is_not_a_camera_is_a_clear_error() {
        let e = Camera::open(Path::new("/dev/null"), 640, 480, PIX_FMT_YUYV)
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("/dev/null is not a V4L2 device")),
            "{e:?}"
        );
        let e = Camera::open(Path::new("/dev/video-nope"), 640, 480, PIX_FMT_YUYV)
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("cannot open camera /dev/video-nope")),
            "{e:?}"
        );
    }
}
