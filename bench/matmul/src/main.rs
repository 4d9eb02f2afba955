//! `matmul-alone M N K THREADS REPS [t|n]`: times a product C = A · B in f32 with the `gemm`
//! crate, the product candle 0.11 runs on the CPU, and prints one JSON object: `ms` (median
//! per product over REPS after 3 warm-up products), `gflops` (2·M·N·K / time). A is `[M, K]`
//! row-major; with `t` (the default) B is a weight `[N, K]` row-major read transposed, as
//! palpipe's PAL layers read theirs; with `n` B is `[K, N]` row-major. bench/matmul.sh
//! compares it with PyTorch's `a @ w.t()` / `a @ b`.

use std::time::Instant;

fn arg(args: &[String], i: usize, name: &str) -> usize {
    match args.get(i).map(|a| a.parse::<usize>()) {
        Some(Ok(v)) if v > 0 => v,
        _ => {
            eprintln!(
                "usage: matmul-alone M N K THREADS REPS [t|n] (positive integers; bad {name})"
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (m, n, k) = (arg(&args, 0, "M"), arg(&args, 1, "N"), arg(&args, 2, "K"));
    let (threads, reps) = (arg(&args, 3, "THREADS"), arg(&args, 4, "REPS"));
    let transposed = match args.get(5).map(String::as_str) {
        None | Some("t") => true,
        Some("n") => false,
        Some(other) => {
            eprintln!("matmul-alone: layout must be t or n, got {other:?}");
            std::process::exit(2);
        }
    };
    // B's strides: Bᵀ of a row-major [n, k] has column stride k and row stride 1; a
    // row-major [k, n] has column stride 1 and row stride n.
    let (b_cs, b_rs) = if transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // Values like a Linear layer's: small and varied (not all equal, not zero); the same
    // formulas as bench/matmul_reference.py.
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i % 89) as f32 - 44.0) / 890.0)
        .collect();
    let mut c = vec![0f32; m * n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut product = || unsafe {
        // SAFETY: every pointer covers its matrix with the strides given (row-major A
        // [m, k] and C [m, n]; B as above).
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    };
    for _ in 0..3 {
        product();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            product();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    println!(
        "{{\"ms\": {:.3}, \"gflops\": {:.1}, \"m\": {m}, \"n\": {n}, \"k\": {k}, \"threads\": {threads}, \"layout\": \"{}\"}}",
        s * 1e3,
        2.0 * (m * n * k) as f64 / s / 1e9,
        if transposed { "t" } else { "n" }
    );
}
