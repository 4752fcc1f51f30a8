// What one core's AMX tile unit does with the step of our packed linear (kernels/npu_serve_kernels/linear/
// cpu_amx.h): how long a TDPBF16PS takes when the step around it reloads 0, 2, 3 or 4 of its input tiles.
// Everything reads a 32 KiB buffer that stays in L1, so memory plays no part. Not part of the build or CI.
//
//   g++ -O2 -mamx-tile -mamx-bf16 scripts/probe_amx_tiles.cpp -o /tmp/probe_amx_tiles
//   /tmp/probe_amx_tiles [GHz] [misaligned]
//
// Prints ns and cycles (at GHz, default 2.6) per TDPBF16PS, median of 5 runs. On the 2-core Xeon of the
// speed issue's fourteenth round (docs/speed-issue12.md), 64-byte aligned: TDPBF16PS alone ~14 cycles
// (3.1 TFLOPS a core), a lone 1 KiB tile load ~7 cycles, and every reload pattern, the 2x2 kernel's step
// of 4 loads + 4 TDPBF16PS included, ~17 cycles a TDPBF16PS (2.5 TFLOPS): in L1 the step is not the limit.
// With `misaligned` (rows 16 bytes off a cache line, each row two lines): 22 cycles with 2 loads, 48 with 4.
// Our kernel's operands are aligned (torch's CPU allocations are 64-byte aligned and every tile row
// starts a multiple of 64 bytes in); at prefill sizes it runs at ~0.75 TFLOPS a thread because its tiles
// come from L2 (scripts/bench_cpu_gemv.py).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

constexpr long kIters = 2000000;

// One step of each pattern; the tiles: C 0-3, A 4-5, B 6-7 (as cpu_amx.h), o the step's 4 KiB.
enum Pattern { kTdpOnly, kLoadsOnly, kReloadB, kReloadA, kReload3, kReload4 };

template <Pattern P>
double run(const uint16_t* buf) {
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kIters; ++i) {
    const uint16_t* o = buf + (i & 7) * 2048;
    if constexpr (P == kLoadsOnly || P == kReload4 || P == kReload3 || P == kReloadA) _tile_loadd(4, o, 64);
    if constexpr (P == kLoadsOnly || P == kReload4 || P == kReload3 || P == kReloadB) _tile_loadd(6, o + 512, 64);
    if constexpr (P == kLoadsOnly || P == kReload4 || P == kReload3 || P == kReloadA) _tile_loadd(5, o + 1024, 64);
    if constexpr (P == kLoadsOnly || P == kReload4 || P == kReloadB) _tile_loadd(7, o + 1536, 64);
    if constexpr (P != kLoadsOnly) {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <Pattern P>
double median_ns_per_op(const uint16_t* buf, int ops_per_step) {
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) t.push_back(run<P>(buf));
  std::sort(t.begin(), t.end());
  return t[2] * 1e9 / (static_cast<double>(kIters) * ops_per_step);
}

}  // namespace

int main(int argc, char** argv) {
  const double ghz = argc > 1 ? std::atof(argv[1]) : 2.6;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // Linux 5.16+: ask for the tile state
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) {
    std::fprintf(stderr, "no AMX tile state for this process (CPU or kernel without AMX)\n");
    return 1;
  }
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
  // 32 KiB of bf16 ~1.0, 64-byte aligned: a tile row that straddles two cache lines costs ~2.5x
  // (`probe_amx_tiles GHz misaligned` shows it).
  const bool misaligned = argc > 2 && std::string(argv[2]) == "misaligned";
  std::vector<uint16_t> storage(8 * 2048 + 64, 0x3f81);
  uint16_t* aligned = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
  const uint16_t* buf = aligned + (misaligned ? 8 : 0);
  _tile_loadd(4, buf, 64);  // the inputs a pattern does not reload (the tile index is an immediate)
  _tile_loadd(5, buf, 64);
  _tile_loadd(6, buf, 64);
  _tile_loadd(7, buf, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);

  struct Row {
    const char* what;
    double ns;
  } rows[] = {
      {"TDPBF16PS alone (4 accumulators)", median_ns_per_op<kTdpOnly>(buf, 4)},
      {"tile load alone (1 KiB, per load)", median_ns_per_op<kLoadsOnly>(buf, 4)},
      {"2 B loads + 4 TDPBF16PS (per TDP)", median_ns_per_op<kReloadB>(buf, 4)},
      {"2 A loads + 4 TDPBF16PS (per TDP)", median_ns_per_op<kReloadA>(buf, 4)},
      {"3 loads + 4 TDPBF16PS (per TDP)", median_ns_per_op<kReload3>(buf, 4)},
      {"4 loads + 4 TDPBF16PS: the 2x2 step (per TDP)", median_ns_per_op<kReload4>(buf, 4)},
  };
  _tile_release();
  std::printf("%-48s %8s %10s\n", "pattern (L1-resident)", "ns", "cycles");
  for (const Row& r : rows) std::printf("%-48s %8.2f %10.1f\n", r.what, r.ns, r.ns * ghz);
  const double peak = 16.0 * 16 * 32 * 2 / rows[0].ns / 1e3;  // TFLOPS of TDPBF16PS alone
  std::printf("TDPBF16PS alone: %.2f TFLOPS; the 2x2 step: %.2f TFLOPS (one core)\n", peak,
              16.0 * 16 * 32 * 2 / rows[5].ns / 1e3);
  return 0;
}
