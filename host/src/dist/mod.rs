//! Data-parallel training on libtorch's own distributed engine, c10d (what torchrun and
//! DistributedDataParallel use), through the C ABI of `host/csrc/dist.cpp`:
//!
//! - [`Rank`]: this process's place in the job, from torchrun's environment (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`).
//! - [`Group`]: a TCPStore rendezvous (rank 0 serves it) and a c10d `ProcessGroup` with the Gloo
//!   backend for CPU tensors and NCCL for CUDA ones (Gloo when the binary has no NCCL, see
//!   [`has_nccl`]); broadcast, all-reduce and barrier, each waited for with the group's timeout so
//!   that a dead or hung rank becomes an error here, never a hang.
//! - [`Reducer`]: libtorch's DDP `Reducer`: autograd hooks on every parameter launch the all-reduce
//!   of a bucket (about 25 MB; the first 1 MB) as soon as backward has filled it, and the end of
//!   backward waits for them and writes the averaged gradients.
//! - [`allreduce_autograd`]: the differentiable sum over ranks `--sync-bn` builds on.
//! - [`shard`]: which samples of an epoch's global order a rank trains on.
//! - [`launch`]: `host train --nproc-per-node N` starting and watching the local ranks.

pub mod launch;

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tch::Tensor;

/// Opaque `c10d` objects owned by the shim.
#[repr(C)]
struct CGroup {
    _private: [u8; 0],
}
#[repr(C)]
struct CReducer {
    _private: [u8; 0],
}
/// `tch`'s `C_tensor*`, an `at::Tensor*` on the C++ side.
type TensorPtr = *mut std::ffi::c_void;

extern "C" {
    fn host_dist_free_error(message: *mut c_char);
    fn host_dist_init(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        nccl: c_int,
        out: *mut *mut CGroup,
    ) -> *mut c_char;
    fn host_dist_has_nccl() -> c_int;
    fn host_dist_group_free(group: *mut CGroup);
    fn host_dist_broadcast(group: *mut CGroup, ts: *const TensorPtr, n: usize, root: c_int) -> *mut c_char;
    fn host_dist_allreduce_sum(group: *mut CGroup, ts: *const TensorPtr, n: usize) -> *mut c_char;
    fn host_dist_barrier(group: *mut CGroup) -> *mut c_char;
    fn host_dist_verify_params(group: *mut CGroup, ts: *const TensorPtr, n: usize) -> *mut c_char;
    fn host_dist_reducer_new(
        group: *mut CGroup,
        params: *const TensorPtr,
        n: usize,
        first_bucket_bytes: i64,
        bucket_bytes: i64,
        out: *mut *mut CReducer,
    ) -> *mut c_char;
    fn host_dist_reducer_prepare(reducer: *mut CReducer) -> *mut c_char;
    fn host_dist_reducer_free(reducer: *mut CReducer);
    fn host_dist_set_sync_group(group: *mut CGroup);
    fn host_dist_allreduce_autograd(x: TensorPtr, out: *mut TensorPtr) -> *mut c_char;
}

/// DDP's bucket sizes: a small first bucket so communication starts early, then 25 MiB.
pub const FIRST_BUCKET_BYTES: i64 = 1024 * 1024;
pub const BUCKET_BYTES: i64 = 25 * 1024 * 1024;
/// Default `--dist-timeout` in seconds: how long a collective may wait for the other ranks.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// The shim's error message, taken over (and freed); `None` on success.
fn check(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: a non-null return of the shim is a NUL-terminated string from malloc.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { host_dist_free_error(err) };
    Some(msg)
}

fn ptrs(ts: &[&Tensor]) -> Vec<TensorPtr> {
    ts.iter().map(|t| t.as_ptr() as TensorPtr).collect()
}

/// Whether this binary's shim has the NCCL backend (see `host/build.rs`).
pub fn has_nccl() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { host_dist_has_nccl() != 0 }
}

/// This process's place in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rank {
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this machine, and how many there are (thread defaults).
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow!("{name}={v:?} is not a non-negative integer")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("{name}: {e}"),
    }
}

impl Rank {
    /// From torchrun's environment; `None` when `WORLD_SIZE` is unset or 1 (a single process).
    pub fn from_env() -> Result<Option<Rank>> {
        let Some(world) = env_usize("WORLD_SIZE")? else { return Ok(None) };
        if world <= 1 {
            return Ok(None);
        }
        let rank = env_usize("RANK")?.ok_or_else(|| anyhow!("WORLD_SIZE={world} but RANK is not set"))?;
        if rank >= world {
            bail!("RANK={rank} is not below WORLD_SIZE={world}");
        }
        let local_rank = env_usize("LOCAL_RANK")?.unwrap_or(0);
        let local_world = env_usize("LOCAL_WORLD_SIZE")?.unwrap_or(1).max(1);
        if local_rank >= local_world {
            bail!("LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world}");
        }
        let master_addr = std::env::var("MASTER_ADDR")
            .map_err(|_| anyhow!("WORLD_SIZE={world} but MASTER_ADDR is not set (the address of rank 0's machine)"))?;
        let master_port = std::env::var("MASTER_PORT")
            .map_err(|_| anyhow!("WORLD_SIZE={world} but MASTER_PORT is not set"))?;
        let master_port =
            master_port.trim().parse().map_err(|_| anyhow!("MASTER_PORT={master_port:?} is not a port number"))?;
        Ok(Some(Rank { rank, world, local_rank, local_world, master_addr, master_port }))
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// A c10d process group over all ranks of the job.
pub struct Group {
    ptr: *mut CGroup,
    pub rank: usize,
    pub world: usize,
}

// SAFETY: c10d process groups are used from one thread at a time here (the training loop); the
// shim's objects are thread-safe to move.
unsafe impl Send for Group {}

impl Group {
    /// Rendezvous at `MASTER_ADDR:MASTER_PORT` (waiting for all ranks at least a minute) and build
    /// the process group, whose collectives wait at most `timeout`; `nccl`: CUDA tensors go through
    /// NCCL (an error when the binary has none).
    pub fn init(r: &Rank, timeout: Duration, nccl: bool) -> Result<Group> {
        let addr = CString::new(r.master_addr.clone()).context("MASTER_ADDR holds a NUL byte")?;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid C string, out pointer to a local.
        let err = unsafe {
            host_dist_init(
                addr.as_ptr(),
                c_int::from(r.master_port),
                r.rank as c_int,
                r.world as c_int,
                timeout_ms,
                c_int::from(nccl),
                &mut ptr,
            )
        };
        if let Some(e) = check(err) {
            bail!(
                "rank {} of {}: cannot join the process group at {}:{}: {e}",
                r.rank,
                r.world,
                r.master_addr,
                r.master_port
            );
        }
        Ok(Group { ptr, rank: r.rank, world: r.world })
    }

    fn fail(&self, what: &str, e: String) -> anyhow::Error {
        anyhow!(
            "rank {} of {}: {what} failed: {e} (another rank has probably died or hung; see its own error)",
            self.rank,
            self.world
        )
    }

    /// In place: every tensor becomes rank `root`'s.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize, what: &str) -> Result<()> {
        let p = ptrs(ts);
        // SAFETY: tensors outlive the call.
        match check(unsafe { host_dist_broadcast(self.ptr, p.as_ptr(), p.len(), root as c_int) }) {
            Some(e) => Err(self.fail(what, e)),
            None => Ok(()),
        }
    }

    /// In place sum over ranks.
    pub fn allreduce_sum(&self, ts: &[&Tensor], what: &str) -> Result<()> {
        let p = ptrs(ts);
        // SAFETY: tensors outlive the call.
        match check(unsafe { host_dist_allreduce_sum(self.ptr, p.as_ptr(), p.len()) }) {
            Some(e) => Err(self.fail(what, e)),
            None => Ok(()),
        }
    }

    pub fn barrier(&self, what: &str) -> Result<()> {
        // SAFETY: live group.
        match check(unsafe { host_dist_barrier(self.ptr) }) {
            Some(e) => Err(self.fail(what, e)),
            None => Ok(()),
        }
    }

    /// Errors unless every rank has the same parameter count, shapes and dtypes as rank 0.
    pub fn verify_params(&self, params: &[&Tensor]) -> Result<()> {
        let p = ptrs(params);
        // SAFETY: tensors outlive the call.
        match check(unsafe { host_dist_verify_params(self.ptr, p.as_ptr(), p.len()) }) {
            Some(e) => Err(self.fail("checking that all ranks build the same network", e)),
            None => Ok(()),
        }
    }

    /// Routes [`allreduce_autograd`] (SyncBatchNorm) through this group.
    pub fn enable_sync_bn(&self) {
        // SAFETY: cleared again in Drop.
        unsafe { host_dist_set_sync_group(self.ptr) };
        SYNC_BN.store(true, Ordering::SeqCst);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: owned pointer, freed once (also clears the SyncBatchNorm group if it is this one).
        SYNC_BN.store(false, Ordering::SeqCst);
        unsafe { host_dist_group_free(self.ptr) };
    }
}

/// libtorch's DDP Reducer over a model's trainable parameters.
pub struct Reducer {
    ptr: *mut CReducer,
    rank: usize,
    world: usize,
}

// SAFETY: see Group.
unsafe impl Send for Reducer {}

impl Reducer {
    /// `params`: the autograd leaves, in a fixed order that is the same on every rank.
    pub fn new(group: &Group, params: &[&Tensor]) -> Result<Reducer> {
        let p = ptrs(params);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: tensors outlive the call (the Reducer keeps its own references).
        let err = unsafe {
            host_dist_reducer_new(group.ptr, p.as_ptr(), p.len(), FIRST_BUCKET_BYTES, BUCKET_BYTES, &mut ptr)
        };
        if let Some(e) = check(err) {
            return Err(group.fail("setting up the gradient reducer", e));
        }
        Ok(Reducer { ptr, rank: group.rank, world: group.world })
    }

    /// Call before each backward: the next backward all-reduces (and averages) every gradient.
    pub fn prepare_for_backward(&self) -> Result<()> {
        // SAFETY: live reducer.
        match check(unsafe { host_dist_reducer_prepare(self.ptr) }) {
            Some(e) => bail!("rank {} of {}: gradient reducer: {e}", self.rank, self.world),
            None => Ok(()),
        }
    }
}

impl Reducer {
    /// The error of a backward whose gradient all-reduce failed.
    pub fn backward_error(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "rank {} of {}: backward with the gradient all-reduce failed: {e} (another rank has probably died or hung; see its own error)",
            self.rank,
            self.world
        )
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: owned pointer, freed once.
        unsafe { host_dist_reducer_free(self.ptr) };
    }
}

static SYNC_BN: AtomicBool = AtomicBool::new(false);

/// Whether a process group is set for SyncBatchNorm ([`Group::enable_sync_bn`]).
pub fn sync_bn_active() -> bool {
    SYNC_BN.load(Ordering::SeqCst)
}

/// Sum of `x` over the ranks of the group given to [`Group::enable_sync_bn`], differentiable:
/// its gradient is the sum over ranks of the incoming gradients.
pub fn allreduce_autograd(x: &Tensor) -> Result<Tensor> {
    let mut out: TensorPtr = std::ptr::null_mut();
    // SAFETY: `x` outlives the call; `out` receives a new at::Tensor* that Tensor::from_ptr owns.
    match check(unsafe { host_dist_allreduce_autograd(x.as_ptr() as TensorPtr, &mut out) }) {
        Some(e) => bail!("SyncBatchNorm statistics all-reduce failed: {e} (another rank has probably died or hung)"),
        None => Ok(unsafe { Tensor::from_ptr(out.cast()) }),
    }
}

/// The samples rank `rank` of `world` trains on in an epoch whose global visiting order is
/// `order`, with `batch` images per rank and step: step `s` of the job takes the global batch
/// `order[s*batch*world ..][.. batch*world]`, and the rank its `rank`-th slice of `batch`. One rank
/// with batch `world*batch` steps through exactly the same samples; an incomplete last global
/// batch is dropped.
pub fn shard(order: &[usize], rank: usize, world: usize, batch: usize) -> Vec<usize> {
    let global = batch * world;
    if global == 0 {
        return Vec::new();
    }
    order
        .chunks_exact(global)
        .flat_map(|step| step[rank * batch..(rank + 1) * batch].iter().copied())
        .collect()
}

/// The test samples rank `rank` of `world` evaluates: every `world`-th one.
pub fn shard_strided(len: usize, rank: usize, world: usize) -> Vec<usize> {
    (rank..len).step_by(world.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_each_global_batch_once() {
        let order: Vec<usize> = (0..23).rev().collect();
        let a = shard(&order, 0, 2, 3);
        let b = shard(&order, 1, 2, 3);
        assert_eq!(a.len(), 9);
        assert_eq!(b.len(), 9);
        for step in 0..3 {
            let mut both = a[step * 3..step * 3 + 3].to_vec();
            both.extend_from_slice(&b[step * 3..step * 3 + 3]);
            assert_eq!(both, order[step * 6..step * 6 + 6]);
        }
        assert_eq!(shard(&order, 0, 1, 6), order[..18]);
    }

    #[test]
    fn strided_shards_partition() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard_strided(10, r, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
