//! The CPU backend: SGEMM from `matrixmultiply` (the kernel ndarray uses: packed, SIMD,
//! multi-threaded for large products) and straightforward loops for the element-wise ops.

use super::{Backend, ComputeError, DeviceTensor};

/// Runs compute operations on the host CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// Splits a tensor into `(rows, row_len)`: everything but the last dimension is rows.
fn rows_and_width(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&last, rest)) => (rest.iter().product(), last),
        None => (1, 1),
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn matmul(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (&[m, k], &[k2, n]) = (a.shape(), b.shape()) else {
            return Err(ComputeError::Shape(format!(
                "matmul needs two matrices, got {:?} and {:?}",
                a.shape(),
                b.shape()
            )));
        };
        if k != k2 {
            return Err(ComputeError::Shape(format!(
                "matmul of [{m}, {k}] by [{k2}, {n}]: inner dimensions differ"
            )));
        }
        let mut c = vec![0.0f32; m * n];
        if m > 0 && n > 0 && k > 0 {
            // SAFETY: the pointers cover m*k, k*n and m*n f32 values with the row-major strides
            // given, which the shape checks above guarantee; `c` does not alias `a` or `b`.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.data().as_ptr(),
                    k as isize,
                    1,
                    b.data().as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        DeviceTensor::new(vec![m, n], c)
    }

    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let data = if a.shape() == b.shape() {
            a.data().iter().zip(b.data()).map(|(x, y)| x + y).collect()
        } else {
            let (_, width) = rows_and_width(a.shape());
            let is_row = matches!(b.shape(), [n] | [1, n] if *n == width);
            if !is_row || a.shape().is_empty() {
                return Err(ComputeError::Shape(format!(
                    "cannot add {:?} to {:?}: need the same shape or a row of {width}",
                    b.shape(),
                    a.shape()
                )));
            }
            a.data()
                .chunks_exact(width.max(1))
                .flat_map(|row| row.iter().zip(b.data()).map(|(x, y)| x + y))
                .collect()
        };
        DeviceTensor::new(a.shape().to_vec(), data)
    }

    fn relu(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        DeviceTensor::new(
            x.shape().to_vec(),
            x.data().iter().map(|v| v.max(0.0)).collect(),
        )
    }

    fn softmax(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (_, width) = rows_and_width(x.shape());
        let mut out = x.data().to_vec();
        for row in out.chunks_exact_mut(width.max(1)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
        DeviceTensor::new(x.shape().to_vec(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> DeviceTensor {
        DeviceTensor::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    /// Textbook triple loop, the reference for the SGEMM path.
    fn naive_matmul(a: &DeviceTensor, b: &DeviceTensor) -> Vec<f32> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a.data()[i * k + p] * b.data()[p * n + j])
                    .sum();
            }
        }
        c
    }

    #[test]
    fn matmul_matches_the_naive_product_on_odd_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 64, 10), (65, 33, 31)] {
            let a = t(
                &[m, k],
                &(0..m * k)
                    .map(|i| (i % 13) as f32 - 6.0)
                    .collect::<Vec<_>>(),
            );
            let b = t(
                &[k, n],
                &(0..k * n).map(|i| (i % 7) as f32 * 0.5).collect::<Vec<_>>(),
            );
            let c = CpuBackend.matmul(&a, &b).unwrap();
            assert_eq!(c.shape(), &[m, n]);
            for (x, y) in c.data().iter().zip(naive_matmul(&a, &b)) {
                assert!(
                    (x - y).abs() <= 1e-3 * y.abs().max(1.0),
                    "{m}x{k}x{n}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn matmul_rejects_mismatched_inner_dimensions() {
        let err = CpuBackend.matmul(&t(&[2, 3], &[0.0; 6]), &t(&[2, 3], &[0.0; 6]));
        assert!(matches!(err, Err(ComputeError::Shape(m)) if m.contains("inner")));
    }

    #[test]
    fn add_broadcasts_a_bias_row() {
        let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = t(&[3], &[10.0, 20.0, 30.0]);
        let c = CpuBackend.add(&a, &b).unwrap();
        assert_eq!(c.data(), &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        assert!(CpuBackend.add(&a, &t(&[2], &[1.0, 2.0])).is_err());
    }

    #[test]
    fn relu_and_softmax() {
        let x = t(&[2, 2], &[-1.0, 2.0, 0.0, 0.0]);
        assert_eq!(CpuBackend.relu(&x).unwrap().data(), &[0.0, 2.0, 0.0, 0.0]);
        let s = CpuBackend.softmax(&x).unwrap();
        assert!((s.data()[0] + s.data()[1] - 1.0).abs() < 1e-6);
        assert!(s.data()[1] > s.data()[0]);
        assert_eq!(&s.data()[2..], &[0.5, 0.5]);
    }

    #[test]
    fn from_le_bytes_checks_length() {
        assert!(DeviceTensor::from_le_bytes(&[2], &[0; 8]).is_ok());
        assert!(matches!(
            DeviceTensor::from_le_bytes(&[2], &[0; 7]),
            Err(ComputeError::DataLength {
                expected: 8,
                actual: 7,
                ..
            })
        ));
    }
}
