// Does a row-blocked "matmul, then its epilogue per block" pay on the CPU? (issue 13, docs/compiler.md,
// "Matmul epilogues"). The d=16 forward Laplacian's [16384,64]x[64,64] product (MKL's sgemm, the one
// torch calls, from libtorch_cpu.so) followed by its square-and-sum over the 16 directions, as one
// product and one pass, and blocked by points. One thread:
//   g++ -std=c++17 -O3 -march=native -fopenmp bench/blocked_epilogue.cpp -o /tmp/blocked_epilogue -ldl
//   OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /tmp/blocked_epilogue \
//       $(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cpu.so'))")
#include <dlfcn.h>
#include <cstdio>
#include <cstdint>
#include <chrono>
#include <vector>
#include <random>
typedef void (*sgemm_t)(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*, const float*, const int*, const float*, float*, const int*);
static sgemm_t sgemm;
// C[M,N] = A[M,K] @ B[K,N], row-major
static void mm(const float* A, const float* B, float* C, int M, int K, int N) {
  const float one = 1, zero = 0;
  sgemm("N", "N", &N, &M, &K, &one, B, &N, A, &K, &zero, C, &N);
}
// k5-like epilogue: per point p (16 rows of 64), out[p, j] = sum_i C[p,i,j]^2 * s[p,j] + t[p,j]
static void epi(const float* __restrict__ C, const float* __restrict__ s, const float* __restrict__ t, float* __restrict__ out, int p0, int p1) {
  for (int p = p0; p < p1; ++p) {
    float acc[64] = {0};
    for (int i = 0; i < 16; ++i) {
      #pragma omp simd
      for (int j = 0; j < 64; ++j) { float v = C[(int64_t)(p - p0) * 1024 + i * 64 + j]; acc[j] += v * v; }
    }
    #pragma omp simd
    for (int j = 0; j < 64; ++j) out[p * 64 + j] = acc[j] * s[p * 64 + j] + t[p * 64 + j];
  }
}
int main(int argc, char** argv) {
  if (argc < 2) { printf("usage: %s path/to/libtorch_cpu.so\n", argv[0]); return 2; }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!h) { printf("%s\n", dlerror()); return 1; }
  sgemm = (sgemm_t)dlsym(h, "sgemm_"); if (!sgemm) sgemm = (sgemm_t)dlsym(h, "SGEMM"); if (!sgemm) { printf("no sgemm_ in %s\n", argv[1]); return 1; }
  const int P = 1024, D = 16, H = 64, M = P * D;
  std::vector<float> A(M * H), B(H * H), C(M * H), s(P * H), t(P * H), out(P * H), Cb(128 * D * H);
  std::mt19937 g(0); std::normal_distribution<float> n;
  for (auto* v : {&A, &B, &s, &t}) for (auto& x : *v) x = n(g);
  auto time = [&](const char* name, auto f) {
    double best = 1e9; for (int r = 0; r < 40; ++r) { auto t0 = std::chrono::steady_clock::now(); f();
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); if (dt < best) best = dt; }
    printf("%-44s %.3f ms\n", name, best * 1e3); };
  time("GEMM 16384x64x64 alone", [&] { mm(A.data(), B.data(), C.data(), M, H, H); });
  time("epilogue pass alone (reads 4 MB)", [&] { epi(C.data(), s.data(), t.data(), out.data(), 0, P); });
  time("GEMM, then epilogue pass", [&] { mm(A.data(), B.data(), C.data(), M, H, H); epi(C.data(), s.data(), t.data(), out.data(), 0, P); });
  for (int bp : {8, 32, 64, 128}) {
    char name[64]; snprintf(name, 64, "row-blocked: %d points (%d rows) per block", bp, bp * D);
    time(name, [&] { for (int p0 = 0; p0 < P; p0 += bp) { mm(A.data() + (int64_t)p0 * D * H, B.data(), Cb.data(), bp * D, H, H); epi(Cb.data(), s.data(), t.data(), out.data(), p0, p0 + bp); } });
  }
}
