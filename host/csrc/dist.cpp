// C ABI over libtorch's c10d (the engine torchrun/DDP use) for host/src/dist.rs: TCPStore
// rendezvous, a ProcessGroup with the Gloo backend (CPU, and CUDA tensors when NCCL is not built)
// and NCCL (CUDA, when built with HOST_DIST_NCCL), collectives that wait with a timeout, the DDP
// Reducer (bucketed gradient all-reduce launched from autograd hooks during backward) and a
// differentiable all-reduce for SyncBatchNorm.
//
// Tensors cross the boundary as tch's `C_tensor*`, which is `at::Tensor*`. Every function returns
// nullptr on success or a malloc'd error message the caller frees with host_dist_free_error: no
// C++ exception crosses into Rust.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef HOST_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::chrono::milliseconds timeout;
};

char* dup_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_message(e.what());
  } catch (...) {
    return dup_message("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensors_of(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

void wait_for(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) {
    throw std::runtime_error("collective did not complete within " + std::to_string(timeout.count()) + " ms");
  }
}

void allreduce_sum(Group& g, std::vector<at::Tensor>& ts) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  opts.timeout = g.timeout;
  wait_for(g.pg->allreduce(ts, opts), g.timeout);
}

// The process group SyncBatchNorm's collectives run on (set by host_dist_set_sync_group).
Group* g_sync_group = nullptr;

// Sum over ranks whose gradient is the sum over ranks of the incoming gradients: every rank's loss
// depends on every rank's statistics.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) {
    std::vector<at::Tensor> ts{x.clone().contiguous()};
    allreduce_sum(*g_sync_group, ts);
    return ts[0];
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list grads) {
    std::vector<at::Tensor> ts{grads[0].clone().contiguous()};
    allreduce_sum(*g_sync_group, ts);
    return {ts[0]};
  }
};

} // namespace

extern "C" {

struct host_dist_group;
struct host_dist_reducer;

void host_dist_free_error(char* message) {
  std::free(message);
}

// Connects rank `rank` of `world` through a TCPStore at master_addr:port (rank 0 serves it) and
// builds the process group. `nccl` != 0: NCCL for CUDA tensors (error if not built with it).
char* host_dist_init(const char* master_addr, int port, int rank, int world, int64_t timeout_ms, int nccl,
                     host_dist_group** out) {
  return guarded([&] {
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    // Starting the ranks (loading libtorch, reading the data) may take longer than a collective
    // may: the rendezvous waits at least a minute.
    so.timeout = std::max(g->timeout, std::chrono::milliseconds(60000));
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), so);

    g->pg = c10::make_intrusive<c10d::ProcessGroup>(g->store, rank, world);
    auto gloo_opts = c10d::ProcessGroupGloo::Options::create_default(g->timeout);
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, gloo_opts);
    gloo->setSequenceNumberForGroup();
    g->pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    g->pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    if (nccl != 0) {
#ifdef HOST_DIST_NCCL
      auto nccl_opts = c10d::ProcessGroupNCCL::Options::create();
      nccl_opts->timeout = g->timeout;
      auto nccl_pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, rank, world, nccl_opts);
      nccl_pg->setSequenceNumberForGroup();
      g->pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
      g->pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl_pg);
#else
      throw std::runtime_error("this host binary was built without NCCL");
#endif
    } else {
      g->pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    }
    *out = reinterpret_cast<host_dist_group*>(g.release());
  });
}

int host_dist_has_nccl() {
#ifdef HOST_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

void host_dist_group_free(host_dist_group* group) {
  auto* g = reinterpret_cast<Group*>(group);
  if (g_sync_group == g) {
    g_sync_group = nullptr;
  }
  delete g;
}

// In place: every tensor becomes rank `root`'s.
char* host_dist_broadcast(host_dist_group* group, at::Tensor** ts, size_t n, int root) {
  return guarded([&] {
    auto& g = *reinterpret_cast<Group*>(group);
    auto tensors = tensors_of(ts, n);
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = g.timeout;
      wait_for(g.pg->broadcast(one, opts), g.timeout);
    }
  });
}

// In place sum over ranks.
char* host_dist_allreduce_sum(host_dist_group* group, at::Tensor** ts, size_t n) {
  return guarded([&] {
    auto& g = *reinterpret_cast<Group*>(group);
    auto tensors = tensors_of(ts, n);
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      allreduce_sum(g, one);
    }
  });
}

char* host_dist_barrier(host_dist_group* group) {
  return guarded([&] {
    auto& g = *reinterpret_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g.timeout;
    wait_for(g.pg->barrier(opts), g.timeout);
  });
}

// Checks that every rank holds the same parameter list (count, shapes, dtypes) as rank 0.
char* host_dist_verify_params(host_dist_group* group, at::Tensor** params, size_t n) {
  return guarded([&] {
    auto& g = *reinterpret_cast<Group*>(group);
    c10d::verify_params_across_processes(g.pg, tensors_of(params, n), std::nullopt);
  });
}

// DDP's Reducer over `params` (the autograd leaves), bucketed as DDP does: a first small bucket
// of `first_bucket_bytes`, then buckets of `bucket_bytes`, parameters in reverse order (the order
// backward produces their gradients). Gradients are averaged over ranks.
char* host_dist_reducer_new(host_dist_group* group, at::Tensor** params, size_t n, int64_t first_bucket_bytes,
                            int64_t bucket_bytes, host_dist_reducer** out) {
  return guarded([&] {
    auto& g = *reinterpret_cast<Group*>(group);
    auto tensors = tensors_of(params, n);
    std::vector<bool> sparse(n, false);
    auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
        tensors, {static_cast<size_t>(first_bucket_bytes), static_cast<size_t>(bucket_bytes)}, sparse);
    std::reverse(buckets.begin(), buckets.end());
    std::vector<int64_t> limit_list(limits.rbegin(), limits.rend());
    std::unordered_map<size_t, std::string> names;
    auto reducer = std::make_unique<c10d::Reducer>(
        tensors, std::move(buckets), g.pg, std::move(sparse), bucket_bytes,
        /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false, std::move(names), first_bucket_bytes,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, std::move(limit_list));
    *out = reinterpret_cast<host_dist_reducer*>(reducer.release());
  });
}

// Before each backward, after the forward, as DDP's forward does: once, after the first
// iteration, rebuild the buckets in the order backward produced the gradients (rank 0's order,
// broadcast), then arm the autograd hooks for one reduction.
char* host_dist_reducer_prepare(host_dist_reducer* reducer) {
  return guarded([&] {
    auto* r = reinterpret_cast<c10d::Reducer*>(reducer);
    r->rebuild_buckets();
    r->prepare_for_forward();
    r->prepare_for_backward({});
  });
}

void host_dist_reducer_free(host_dist_reducer* reducer) {
  try {
    delete reinterpret_cast<c10d::Reducer*>(reducer);
  } catch (...) {
    // ~Reducer is noexcept(false); nothing sensible to do while tearing down.
  }
}

// SyncBatchNorm's collectives go through this group (nullptr: none).
void host_dist_set_sync_group(host_dist_group* group) {
  g_sync_group = reinterpret_cast<Group*>(group);
}

// Differentiable sum over ranks of `x` (through the sync group); *out is a new tensor.
char* host_dist_allreduce_autograd(const at::Tensor* x, at::Tensor** out) {
  return guarded([&] {
    if (g_sync_group == nullptr) {
      throw std::runtime_error("no process group set for SyncBatchNorm");
    }
    *out = new at::Tensor(AllReduceSum::apply(*x));
  });
}

} // extern "C"
