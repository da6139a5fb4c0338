//! The CPU backend: SGEMM from `matrixmultiply` (the kernel ndarray uses: packed, SIMD,
//! multi-threaded for large products) for matmul and for convolution (im2col, then one SGEMM
//! per batch), and straightforward loops for the element-wise ops and the pooling.

use super::{Backend, ComputeError, DeviceTensor, shapes};

/// Runs compute operations on the host CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// `a [m, k] × b [k, n]`, row-major, with `matrixmultiply`'s SGEMM.
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    assert!(
        a.len() == m * k && b.len() == k * n,
        "sgemm operands match their shapes"
    );
    let mut c = vec![0.0f32; m * n];
    if m > 0 && n > 0 && k > 0 {
        // SAFETY: the pointers cover m*k, k*n and m*n f32 values with the row-major strides
        // given (asserted above); `c` does not alias `a` or `b`.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    c
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn upload(&self, shape: Vec<usize>, data: Vec<f32>) -> Result<DeviceTensor, ComputeError> {
        DeviceTensor::new(shape, data)
    }

    fn read(&self, x: &DeviceTensor) -> Result<Vec<f32>, ComputeError> {
        Ok(x.host_data()?.to_vec())
    }

    fn matmul(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (m, k, n) = shapes::matmul(a.shape(), b.shape())?;
        let c = sgemm(m, k, n, a.host_data()?, b.host_data()?);
        DeviceTensor::new(vec![m, n], c)
    }

    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let repeat = shapes::add(a.shape(), b.shape())?;
        let (xs, ys) = (a.host_data()?, b.host_data()?);
        let data = xs
            .chunks_exact(repeat.max(1))
            .flat_map(|chunk| chunk.iter().zip(ys).map(|(x, y)| x + y))
            .collect();
        DeviceTensor::new(a.shape().to_vec(), data)
    }

    fn relu(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        DeviceTensor::new(
            x.shape().to_vec(),
            x.host_data()?.iter().map(|v| v.max(0.0)).collect(),
        )
    }

    fn softmax(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (_, width) = shapes::rows_and_width(x.shape());
        let mut out = x.host_data()?.to_vec();
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

    fn conv2d(
        &self,
        x: &DeviceTensor,
        filters: &DeviceTensor,
        pad: usize,
    ) -> Result<DeviceTensor, ComputeError> {
        let shapes::Conv {
            n,
            c,
            h,
            w,
            f,
            kh,
            kw,
            pad,
            oh,
            ow,
        } = shapes::conv2d(x.shape(), filters.shape(), pad)?;
        // im2col: one column per output pixel of every image, holding the c·kh·kw input values
        // under the filter there (zero in the padding); then one SGEMM for the whole batch.
        let (patch, pixels) = (c * kh * kw, n * oh * ow);
        let xs = x.host_data()?;
        let mut cols = vec![0.0f32; patch * pixels];
        for ch in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut cols[((ch * kh + ky) * kw + kx) * pixels..][..pixels];
                    for image in 0..n {
                        for oy in 0..oh {
                            let Some(iy) = (oy + ky).checked_sub(pad).filter(|&y| y < h) else {
                                continue;
                            };
                            for ox in 0..ow {
                                if let Some(ix) = (ox + kx).checked_sub(pad).filter(|&x| x < w) {
                                    row[(image * oh + oy) * ow + ox] =
                                        xs[((image * c + ch) * h + iy) * w + ix];
                                }
                            }
                        }
                    }
                }
            }
        }
        // [f, patch] × [patch, n·oh·ow] → [f, n, oh·ow]; reorder to [n, f, oh·ow].
        let product = sgemm(f, patch, pixels, filters.host_data()?, &cols);
        let plane = oh * ow;
        let mut out = vec![0.0f32; n * f * plane];
        for filter in 0..f {
            for image in 0..n {
                out[(image * f + filter) * plane..][..plane]
                    .copy_from_slice(&product[(filter * n + image) * plane..][..plane]);
            }
        }
        DeviceTensor::new(vec![n, f, oh, ow], out)
    }

    fn max_pool(&self, x: &DeviceTensor, size: usize) -> Result<DeviceTensor, ComputeError> {
        let [n, c, h, w] = shapes::max_pool(x.shape(), size)?;
        let (oh, ow) = (h / size, w / size);
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in x.host_data()?.chunks_exact(h * w) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..size).flat_map(|dy| {
                        let row = (oy * size + dy) * w + ox * size;
                        plane[row..row + size].iter().copied()
                    });
                    out.push(window.fold(f32::NEG_INFINITY, f32::max));
                }
            }
        }
        DeviceTensor::new(vec![n, c, oh, ow], out)
    }

    fn reshape(&self, x: &DeviceTensor, shape: &[usize]) -> Result<DeviceTensor, ComputeError> {
        shapes::reshape(x.shape(), shape)?;
        DeviceTensor::new(shape.to_vec(), x.host_data()?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> DeviceTensor {
        DeviceTensor::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn values(tensor: &DeviceTensor) -> &[f32] {
        tensor.host_data().unwrap()
    }

    /// Textbook triple loop, the reference for the SGEMM path.
    fn naive_matmul(a: &DeviceTensor, b: &DeviceTensor) -> Vec<f32> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| values(a)[i * k + p] * values(b)[p * n + j])
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
            for (x, y) in values(&c).iter().zip(naive_matmul(&a, &b)) {
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
        assert_eq!(values(&c), &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        assert!(CpuBackend.add(&a, &t(&[2], &[1.0, 2.0])).is_err());
    }

    #[test]
    fn relu_and_softmax() {
        let x = t(&[2, 2], &[-1.0, 2.0, 0.0, 0.0]);
        assert_eq!(values(&CpuBackend.relu(&x).unwrap()), &[0.0, 2.0, 0.0, 0.0]);
        let s = CpuBackend.softmax(&x).unwrap();
        assert!((values(&s)[0] + values(&s)[1] - 1.0).abs() < 1e-6);
        assert!(values(&s)[1] > values(&s)[0]);
        assert_eq!(&values(&s)[2..], &[0.5, 0.5]);
    }

    #[test]
    fn conv2d_with_padding_matches_hand_computed_values() {
        // A 3x3 image of 1..9 and a filter that sums each 3x3 neighbourhood.
        let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let ones = t(&[1, 1, 3, 3], &[1.0; 9]);
        let same = CpuBackend.conv2d(&x, &ones, 1).unwrap();
        assert_eq!(same.shape(), &[1, 1, 3, 3]);
        // Corners see 4 pixels, edges 6, the centre all 9.
        assert_eq!(
            values(&same),
            &[12., 21., 16., 27., 45., 33., 24., 39., 28.]
        );
        let valid = CpuBackend.conv2d(&x, &ones, 0).unwrap();
        assert_eq!(
            (valid.shape(), values(&valid)),
            (&[1, 1, 1, 1][..], &[45.][..])
        );
        // Two channels, two filters: each output channel sums its filter over both inputs.
        let x2 = t(&[1, 2, 1, 1], &[1., 10.]);
        let f2 = t(&[2, 2, 1, 1], &[1., 0., 1., 1.]);
        assert_eq!(values(&CpuBackend.conv2d(&x2, &f2, 0).unwrap()), &[1., 11.]);
        assert!(CpuBackend.conv2d(&x2, &ones, 0).is_err(), "channels differ");
    }

    /// The convolution by its definition, as a reference.
    fn naive_conv2d(x: &DeviceTensor, f: &DeviceTensor, pad: usize) -> Vec<f32> {
        let (&[n, c, h, w], &[fo, _, kh, kw]) = (x.shape(), f.shape()) else {
            unreachable!()
        };
        let (oh, ow) = (h + 2 * pad - kh + 1, w + 2 * pad - kw + 1);
        let mut out = Vec::new();
        for i in 0..n {
            for o in 0..fo {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut sum = 0.0;
                        for ch in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let (iy, ix) = (y + ky, xx + kx);
                                    if iy >= pad && ix >= pad && iy - pad < h && ix - pad < w {
                                        sum += values(x)
                                            [((i * c + ch) * h + iy - pad) * w + ix - pad]
                                            * values(f)[((o * c + ch) * kh + ky) * kw + kx];
                                    }
                                }
                            }
                        }
                        out.push(sum);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv2d_matches_the_definition_on_batches_and_odd_shapes() {
        let pattern = |len: usize, seed: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as f32 * 0.37 + seed).sin() * 3.0).round())
                .collect()
        };
        for &(n, c, h, w, f, k, pad) in &[
            (3, 2, 5, 6, 3, 3, 1),
            (2, 1, 4, 4, 2, 2, 0),
            (1, 3, 7, 5, 4, 3, 2),
        ] {
            let x = t(&[n, c, h, w], &pattern(n * c * h * w, 0.5));
            let filters = t(&[f, c, k, k], &pattern(f * c * k * k, 1.5));
            let got = CpuBackend.conv2d(&x, &filters, pad).unwrap();
            assert_eq!(
                values(&got),
                naive_conv2d(&x, &filters, pad),
                "{:?}",
                got.shape()
            );
        }
    }

    #[test]
    fn max_pool_takes_window_maxima_and_drops_partial_windows() {
        let x = t(
            &[1, 1, 3, 4],
            &[1., 5., 2., 0., 3., 4., 8., 1., 9., 9., 9., 9.],
        );
        let pooled = CpuBackend.max_pool(&x, 2).unwrap();
        assert_eq!(
            (pooled.shape(), values(&pooled)),
            (&[1, 1, 1, 2][..], &[5., 8.][..])
        );
        let flat = CpuBackend.reshape(&pooled, &[1, 2]).unwrap();
        assert_eq!(flat.shape(), &[1, 2]);
        assert!(CpuBackend.reshape(&pooled, &[3]).is_err());
        assert!(CpuBackend.max_pool(&x, 4).is_err());
    }

    #[test]
    fn decode_le_f32_checks_length() {
        assert!(crate::decode_le_f32(&[2], &[0; 8]).is_ok());
        assert!(matches!(
            crate::decode_le_f32(&[2], &[0; 7]),
            Err(ComputeError::DataLength {
                expected: 8,
                actual: 7,
                ..
            })
        ));
    }
}
