// Helper threads for our CPU kernels that never make the caller wait for a thread that is not working.
//
// Why not OpenMP: a decode step calls ~200 small kernels (7-60 us each at one request). With
// OMP_WAIT_POLICY=PASSIVE (our default: spinning threads are pathological on a shared 2-core box) each
// parallel region wakes its threads through the kernel (~10-20 us) and ends in a barrier that waits for
// all of them, so a second thread lost time on every layer below ~4 MiB of weights (the GEMV kernel before linear/cpu_gemm.h). Yet two
// threads stream weights at 1.37x one thread's rate (128 MiB at one row: 29.7 -> 40.6 GB/s).
//
// Here the work is a list of chunks claimed one at a time from one atomic word (generation, count, next
// index). The caller posts a task and starts claiming at once; helpers that are awake join in; the
// caller then waits only for chunks a helper has already claimed (one each at most). A helper that is
// asleep, descheduled or slow to wake costs nothing but the chunks it did not take. After a task a
// helper spins for kSpinMicros, long enough to stay awake through a forward's gaps between kernels
// (Python and attention between two linears: ~10-100 us), then sleeps on a condition variable, so an
// idle server spins for 0.2 ms after each step, not forever.
//
// Helpers: at::get_num_threads() - 1 of them (so `--threads 1` means none), started on first use, never
// joined (the pool lives as long as the process). Every extension module that includes this header has
// its own pool; the model runner sends a step's kernels through one module (fast_decoder.py).

#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <pthread.h>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace npu_serve_pool {

using ChunkFn = void (*)(void* ctx, int64_t chunk);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

class Pool {
 public:
  static constexpr int64_t kSpinMicros = 200;

  static Pool& instance() {
    static bool registered = [] {
      // A forked child has none of the parent's helper threads, and may have inherited a mutex one
      // of them held: it starts over with a fresh pool (the old one is dropped, not destroyed).
      pthread_atfork(nullptr, nullptr, [] { current() = new Pool(); });
      return true;
    }();
    (void)registered;
    return *current();
  }

  // fn(ctx, i) for every i in [0, n), by the calling thread and whichever helpers are awake; returns
  // when all n are done. Chunks must be independent (any thread, any order).
  void run(int64_t n, ChunkFn fn, void* ctx) {
    const int helpers = at::get_num_threads() - 1;
    if (n <= 1 || helpers <= 0 || n >= kMaxCount) {
      for (int64_t i = 0; i < n; ++i) fn(ctx, i);
      return;
    }
    std::lock_guard<std::mutex> one_task(run_mutex_);
    start_helpers(helpers);
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    gen_ = (gen_ + 1) & kGenMask;
    word_.store(pack(gen_, n, 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    int64_t mine = 0;
    for (int64_t i; (i = claim(gen_)) >= 0; ++mine) fn(ctx, i);
    done_.fetch_add(mine, std::memory_order_acq_rel);
    while (done_.load(std::memory_order_acquire) < n) cpu_relax();
  }

 private:
  static Pool*& current() {
    static Pool* pool = new Pool();  // never destroyed: its helper threads are detached
    return pool;
  }

  // word_: generation (16 bits) | chunk count (24) | next chunk (24).
  static constexpr uint64_t kGenMask = 0xFFFF;
  static constexpr int64_t kMaxCount = int64_t{1} << 24;
  static uint64_t pack(uint64_t gen, int64_t n, int64_t next) {
    return (gen << 48) | (static_cast<uint64_t>(n) << 24) | static_cast<uint64_t>(next);
  }
  static uint64_t gen_of(uint64_t w) { return w >> 48; }
  static int64_t count_of(uint64_t w) { return static_cast<int64_t>((w >> 24) & (kMaxCount - 1)); }
  static int64_t next_of(uint64_t w) { return static_cast<int64_t>(w & (kMaxCount - 1)); }

  // The next unclaimed chunk of task `gen`, or -1 when there is none (or the task is no longer current).
  int64_t claim(uint64_t gen) {
    uint64_t w = word_.load(std::memory_order_acquire);
    for (;;) {
      if (gen_of(w) != gen || next_of(w) >= count_of(w)) return -1;
      if (word_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return next_of(w);
    }
  }

  void start_helpers(int helpers) {
    for (; started_ < helpers; ++started_) std::thread([this] { helper_loop(); }).detach();
  }

  void helper_loop() {
    uint64_t seen = gen_of(word_.load(std::memory_order_acquire));
    for (;;) {
      // Wait for a new task: spin for kSpinMicros, then sleep until run() wakes us.
      auto since = std::chrono::steady_clock::now();
      uint64_t w;
      for (uint32_t spins = 1;; ++spins) {
        w = word_.load(std::memory_order_acquire);
        if (gen_of(w) != seen) break;
        // Yield rather than pause: a thread that wants this core (OpenMP's worker, woken for one of
        // torch's parallel regions between our kernels, or another process) gets it at once, instead
        // of waiting for the scheduler to preempt a spinning helper.
        std::this_thread::yield();
        if (spins % 256 == 0 &&
            std::chrono::steady_clock::now() - since > std::chrono::microseconds(kSpinMicros)) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          wake_.wait(lock, [&] { return gen_of(word_.load(std::memory_order_seq_cst)) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          since = std::chrono::steady_clock::now();
        }
      }
      seen = gen_of(w);
      // fn_ and ctx_ are read only after a chunk of this generation was claimed: run() cannot return
      // (and post the next task) before that chunk is counted done.
      int64_t mine = 0;
      for (int64_t i; (i = claim(seen)) >= 0; ++mine) fn_(ctx_, i);
      if (mine > 0) done_.fetch_add(mine, std::memory_order_acq_rel);
    }
  }

  std::mutex run_mutex_;  // one task at a time
  int started_ = 0;
  uint64_t gen_ = 0;
  ChunkFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<uint64_t> word_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
};

// f(i) for every i in [0, n) through the pool (f: any callable; it stays on the caller's stack).
template <typename F>
void parallel_chunks(int64_t n, F& f) {
  Pool::instance().run(n, [](void* ctx, int64_t i) { (*static_cast<F*>(ctx))(i); }, &f);
}

}  // namespace npu_serve_pool
