//! A dense, row-major, contiguous f32 tensor on the host. This is the CPU reference backend's
//! only data type: weights stored as f16/bf16 are widened to f32 when loaded, and every op
//! accumulates in f32 (or f64 where the reference needs it).

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    data: Vec<f32>,
    shape: Vec<usize>,
}

impl Tensor {
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "Tensor::new",
                format!("shape {:?} holds {} elements but data has {}", shape, n, data.len()),
            ));
        }
        Ok(Tensor { data, shape: shape.to_vec() })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { data: vec![0.0; shape.iter().product()], shape: shape.to_vec() }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of dimension `i`; negative indices count from the end.
    pub fn dim(&self, i: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if i < 0 { (r + i) as usize } else { i as usize }]
    }
    /// The matrix view of a tensor: all leading dimensions folded into rows.
    pub fn rows_cols(&self) -> (usize, usize) {
        let c = *self.shape.last().unwrap_or(&1);
        (self.data.len().checked_div(c).unwrap_or(0), c)
    }

    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {:?}", self.shape, shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Row `i` of the matrix view.
    pub fn row(&self, i: usize) -> &[f32] {
        let (_, c) = self.rows_cols();
        &self.data[i * c..(i + 1) * c]
    }

    /// Rows `[start, end)` of the matrix view, copied.
    pub fn rows(&self, start: usize, end: usize) -> Tensor {
        let (_, c) = self.rows_cols();
        Tensor { data: self.data[start * c..end * c].to_vec(), shape: vec![end - start, c] }
    }

    /// Concatenate matrices along rows; all must have the same number of columns.
    pub fn cat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let c = parts.first().map(|t| t.rows_cols().1).unwrap_or(0);
        let mut data = Vec::new();
        for p in parts {
            if p.rows_cols().1 != c {
                return Err(Error::shape(
                    "cat_rows",
                    format!("column counts differ: {:?} vs {} columns", p.shape(), c),
                ));
            }
            data.extend_from_slice(p.data());
        }
        let r = data.len() / c.max(1);
        Ok(Tensor { data, shape: vec![r, c] })
    }

    /// Largest absolute elementwise difference; shapes must match.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape, "max_abs_diff: shapes differ");
        self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }
}
