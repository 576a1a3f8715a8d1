// Block-sparse Linear for CPU: y = x · Wᵀ + b with W stored as block-CSR.
//
// Layout (built by compressor/kernels/block_sparse.py, BlockSparseWeight.from_dense):
//   values  (nnzb, bw, bh) fp32: each kept block of W transposed, so for one input feature k the
//           bh output weights are contiguous and load as whole vectors;
//   row_ptr (nbr + 1) int64:     block row r owns blocks row_ptr[r] .. row_ptr[r+1];
//   col_idx (nnzb) int64:        block column of each kept block.
// W is (out_features, in_features); a block is bh output features × bw input features, and the
// last block row/column may be ragged (the packed blocks are zero-padded).
//
// Work split. Tokens are taken in panels of MR rows, each copied once into a thread-local buffer
// laid out [block column][row][bw] (zero-padded), so the micro-kernel reads one contiguous chunk
// of MR·bw floats per block; reading x in place would put MR rows that lie K floats apart into the
// same few L1 sets (K = 1536 is 6 KiB, which maps to only two sets of a 4 KiB-page L1).
//
// The micro-kernel keeps an MR × SW output tile in registers: per input feature it loads SW/VL
// weight vectors and broadcasts MR activations, so every load feeds several FMAs (on AVX-512 the
// broadcast folds into the FMA as a {1to16} memory operand). While it works through one block it
// prefetches the next block's activations, a slice per input feature: left to the first k step,
// those MR lines all miss at once, more than the core's fill buffers hold (perf put 10-15 % of the
// kernel's samples on that stall).
//
// Threads split the token panels evenly, or the block rows when there are fewer panels than threads
// (OpenMP; the library links the same libgomp.so.1 torch has loaded, so it shares torch's pool, and
// the caller passes torch.get_num_threads()).
//
// The interface is plain C (extern "C", called through ctypes): no torch or Python headers, so the
// first-use build takes about a second instead of the ~20 s that ATen/torch headers cost, and the
// library does not depend on torch's C++ ABI. The torch op itself is registered in Python.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// GCC/Clang vector extensions: the compiler picks the instructions (AVX-512, AVX2, NEON, SSE).
typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

// Unaligned loads and stores (memcpy compiles to one vmovups; no aliasing or alignment promises).
template <typename V>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

#if defined(__AVX512F__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;  // ymm0-15 (AVX2), xmm0-15 (SSE); NEON's 32 are left half used
#endif

// One output tile: MR token rows × (NV vectors of V) output features, accumulated in registers
// over every kept block of the block row. `w` points at the block row's first block (at this
// strip's column offset); blocks are bw·bh floats apart, rows of a block bh apart. BW > 0 fixes
// the block width at compile time, so the activation offsets become immediates instead of taking
// one general register per row (which runs out and spills at MR = 28).
template <typename V, int NV, int MR, int BW>
inline void micro_kernel(const float* __restrict xp, const float* __restrict w, const int64_t* __restrict cols,
                         int64_t nnz, int64_t bw_rt, int64_t bh, const float* __restrict bias, float* __restrict y,
                         int64_t ldy, int64_t rows, int64_t valid_cols) {
  constexpr int L = sizeof(V) / sizeof(float);
  const int64_t bw = BW > 0 ? BW : bw_rt;
  float b[NV * L] = {};  // the bias of this strip; zeros past the last output feature or without one
  if (bias != nullptr) std::memcpy(b, bias, valid_cols * sizeof(float));
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const V bv = load<V>(b + v * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) acc[i][v] = bv;
  }
  for (int64_t j = 0; j < nnz; ++j) {
    const float* __restrict xb = xp + cols[j] * MR * bw;
    const float* __restrict wb = w + j * bw * bh;
    // The next block's MR·bw activations, a slice per k step: its first k step touches all their
    // lines at once, more misses than the core can have in flight.
    const float* nx = xp + cols[j + 1 < nnz ? j + 1 : j] * MR * bw;
    for (int64_t k = 0; k < bw; ++k) {
#pragma GCC unroll 4
      for (int o = 0; o < MR; o += 16) __builtin_prefetch(nx + k * MR + o, 0, 3);
      __builtin_prefetch(nx + k * MR + MR - 1, 0, 3);
      V wv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) wv[v] = load<V>(wb + k * bh + v * L);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const float s = xb[i * bw + k];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] += s * wv[v];
      }
    }
  }
  if (rows == MR && valid_cols == NV * L) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) store<V>(y + i * ldy + v * L, acc[i][v]);
    }
  } else {  // last token panel or last (ragged) block row: copy out only what exists
    for (int64_t i = 0; i < rows; ++i) {
      float tmp[NV * L];
      for (int v = 0; v < NV; ++v) std::memcpy(tmp + v * L, &acc[i][v], sizeof(V));
      std::memcpy(y + i * ldy, tmp, valid_cols * sizeof(float));
    }
  }
}

struct Problem {
  const float* x;
  int64_t m, k;
  const float* values;
  const int64_t* row_ptr;
  const int64_t* col_idx;
  const float* bias;  // n floats, or null
  float* y;
  int64_t n, bh, bw, nbr, nbc;
};

// Copy rows [row0, row0 + MR) of x into [block column][row][bw], zero-padding missing rows and
// the ragged last block column. With BW fixed at compile time each block's copy is a few inline
// vector moves instead of a memcpy call (a call per 128 bytes cost more than the copy).
template <int MR, int BW>
void pack_panel(const Problem& p, int64_t row0, float* dst) {
  const int64_t bw = BW > 0 ? BW : p.bw;
  const int64_t full = p.k / bw;  // block columns with no ragged edge
  for (int64_t i = 0; i < MR; ++i) {
    const int64_t row = row0 + i;
    float* d = dst + i * bw;
    if (row >= p.m) {
      for (int64_t c = 0; c < p.nbc; ++c) std::memset(d + c * MR * bw, 0, bw * sizeof(float));
      continue;
    }
    const float* src = p.x + row * p.k;
    for (int64_t c = 0; c < full; ++c) std::memcpy(d + c * MR * bw, src + c * bw, bw * sizeof(float));
    if (full < p.nbc) {
      const int64_t take = p.k - full * bw;
      std::memcpy(d + full * MR * bw, src + full * bw, take * sizeof(float));
      std::memset(d + full * MR * bw + take, 0, (bw - take) * sizeof(float));
    }
  }
}

// Token panels [begin, end) × block rows [r0, r1) for one thread: pack a panel, then run it
// through every block row. (Packing several panels and sweeping the block rows across them, to
// reuse each block row's weights from L1, measured up to 1.5x slower on the 384 → 1536 layer: the
// weights come from L2 fast enough, and the taller group's output rows thrash L1 and L2.)
template <typename V, int NV, int MR, int BW>
void run_panels(const Problem& p, int64_t begin, int64_t end, int64_t r0, int64_t r1) {
  constexpr int SW = NV * sizeof(V) / sizeof(float);  // output features per micro-kernel call
  thread_local std::vector<float> buffer;               // kept across calls: no page faults on every call
  const int64_t panel_floats = p.nbc * MR * p.bw;
  if (static_cast<int64_t>(buffer.size()) < panel_floats) buffer.resize(panel_floats);
  float* xp = buffer.data();
  for (int64_t q = begin; q < end; ++q) {
    pack_panel<MR, BW>(p, q * MR, xp);
    const int64_t rows = std::min<int64_t>(MR, p.m - q * MR);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b0 = p.row_ptr[r], nnz = p.row_ptr[r + 1] - b0;
      for (int64_t s = 0; s < p.bh; s += SW) {
        const int64_t col0 = r * p.bh + s;
        if (col0 >= p.n) break;
        micro_kernel<V, NV, MR, BW>(xp, p.values + b0 * p.bw * p.bh + s, p.col_idx + b0, nnz, p.bw, p.bh,
                                    p.bias ? p.bias + col0 : nullptr, p.y + q * MR * p.n + col0, p.n, rows,
                                    std::min<int64_t>(SW, p.n - col0));
      }
    }
  }
}

template <typename V, int NV, int MR, int BW>
void run_bw(const Problem& p, int threads) {
  const int64_t panels = (p.m + MR - 1) / MR;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, std::max(panels, p.nbr))));
  if (threads == 1) return run_panels<V, NV, MR, BW>(p, 0, panels, 0, p.nbr);
  // Split the tokens; with fewer panels than threads (a batch of one small image), the block rows.
  const bool by_rows = panels < threads;
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (by_rows) {
      run_panels<V, NV, MR, BW>(p, 0, panels, p.nbr * t / nt, p.nbr * (t + 1) / nt);
    } else {
      run_panels<V, NV, MR, BW>(p, panels * t / nt, panels * (t + 1) / nt, 0, p.nbr);
    }
  }
}

template <typename V, int NV, int MR>
void run(const Problem& p, int threads) {
  switch (p.bw) {
    case 16: return run_bw<V, NV, MR, 16>(p, threads);
    case 32: return run_bw<V, NV, MR, 32>(p, threads);
    default: return run_bw<V, NV, MR, 0>(p, threads);
  }
}

// Tile shapes per ISA: the accumulators take all but a few vector registers.
void dispatch(const Problem& p, int threads) {
#if defined(__AVX512F__)
  if (p.bh % 32 == 0) return run<v16, 2, (kVectorRegisters - 4) / 2>(p, threads);  // 14 × 32
  if (p.bh % 16 == 0) return run<v16, 1, kVectorRegisters - 4>(p, threads);        // 28 × 16
  return run<v8, 1, kVectorRegisters - 4>(p, threads);                             // 28 × 8
#elif defined(__AVX__)
  if (p.bh % 16 == 0) return run<v8, 2, (kVectorRegisters - 4) / 2>(p, threads);  // 6 × 16
  return run<v8, 1, kVectorRegisters - 4>(p, threads);                            // 12 × 8
#else
  if (p.bh % 8 == 0) return run<v4, 2, (kVectorRegisters - 4) / 2>(p, threads);
  return run<v4, 1, kVectorRegisters - 4>(p, threads);
#endif
}

}  // namespace

extern "C" {

// Bumped whenever the signature below changes; the loader refuses a library that disagrees.
int compressor_bsr_abi_version() { return 2; }

// y (m, n) = x (m, k) · Wᵀ + bias, W in the block-CSR layout above with nnzb kept blocks; `bias`
// holds n floats or is null; all arrays are contiguous. The index arrays are checked here (a few
// hundred integer compares; a bad index would read out of bounds): returns 0, or 1 if row_ptr is
// not 0 … nnzb and non-decreasing, 2 if a block column is outside the weight.
int compressor_bsr_linear_f32(const float* x, int64_t m, int64_t k, const float* values, const int64_t* row_ptr,
                              const int64_t* col_idx, int64_t nnzb, const float* bias, float* y, int64_t n,
                              int64_t bh, int64_t bw, int threads) {
  const int64_t nbr = (n + bh - 1) / bh, nbc = (k + bw - 1) / bw;
  if (row_ptr[0] != 0 || row_ptr[nbr] != nnzb) return 1;
  for (int64_t r = 0; r < nbr; ++r) {
    if (row_ptr[r + 1] < row_ptr[r]) return 1;
  }
  for (int64_t j = 0; j < nnzb; ++j) {
    if (col_idx[j] < 0 || col_idx[j] >= nbc) return 2;
  }
  if (m > 0) dispatch(Problem{x, m, k, values, row_ptr, col_idx, bias, y, n, bh, bw, nbr, nbc}, threads);
  return 0;
}

// Which register tiles this build uses (reports, benches).
const char* compressor_bsr_info() {
#if defined(__AVX512F__)
  return "avx512: 28x16 / 14x32 register tiles";
#elif defined(__AVX__)
  return "avx2: 12x8 / 6x16 register tiles";
#else
  return "generic: 128-bit vectors";
#endif
}

}  // extern "C"
