//! Arrow `RecordBatch`es to and from the three formats (feature `arrow`), through the
//! `arrow` and `parquet` crates. CSV and JSON lines are read with their schema inferred
//! from the data; Parquet carries its own.

use std::io::{BufReader, Cursor};
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;

use crate::{Dataset, DatasetError, DatasetRoot, Format, Latest};

fn encoding(format: Format, e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Encoding {
        format: format.as_str(),
        message: e.to_string(),
    }
}

/// Encodes batches (all of one schema) as a file of `format`.
pub fn encode(format: Format, batches: &[RecordBatch]) -> Result<Vec<u8>, DatasetError> {
    let err = |e: &dyn std::fmt::Display| encoding(format, e);
    let mut buf = Vec::new();
    match format {
        Format::Parquet => {
            let Some(first) = batches.first() else {
                return Err(err(&"no batches (Parquet needs a schema)"));
            };
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, first.schema(), None).map_err(|e| err(&e))?;
            for b in batches {
                w.write(b).map_err(|e| err(&e))?;
            }
            w.close().map_err(|e| err(&e))?;
        }
        Format::Csv => {
            let mut w = arrow_csv::Writer::new(&mut buf);
            for b in batches {
                w.write(b).map_err(|e| err(&e))?;
            }
        }
        Format::JsonLines => {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            for b in batches {
                w.write(b).map_err(|e| err(&e))?;
            }
            w.finish().map_err(|e| err(&e))?;
        }
    }
    Ok(buf)
}

/// Decodes a file of `format` into batches.
pub fn decode(format: Format, data: Bytes) -> Result<Vec<RecordBatch>, DatasetError> {
    let err = |e: &dyn std::fmt::Display| encoding(format, e);
    match format {
        Format::Parquet => parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| err(&e))?
            .map(|b| b.map_err(|e| err(&e)))
            .collect(),
        Format::Csv => {
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(Cursor::new(&data), None)
                .map_err(|e| err(&e))?;
            arrow_csv::ReaderBuilder::new(Arc::new(schema))
                .with_header(true)
                .build(Cursor::new(data))
                .map_err(|e| err(&e))?
                .map(|b| b.map_err(|e| err(&e)))
                .collect()
        }
        Format::JsonLines => {
            let (schema, _) =
                arrow_json::reader::infer_json_schema_from_seekable(BufReader::new(Cursor::new(&data)), None)
                    .map_err(|e| err(&e))?;
            arrow_json::ReaderBuilder::new(Arc::new(schema))
                .build(BufReader::new(Cursor::new(data)))
                .map_err(|e| err(&e))?
                .map(|b| b.map_err(|e| err(&e)))
                .collect()
        }
    }
}

impl DatasetRoot {
    /// Writes batches as the dataset's format (see [`DatasetRoot::write`]).
    pub async fn write_batches(&self, ds: &Dataset, batches: &[RecordBatch]) -> Result<Latest, DatasetError> {
        let data = encode(ds.format, batches)?;
        self.write(ds, data).await
    }

    /// Reads a partition as batches.
    pub async fn read_batches(&self, ds: &Dataset) -> Result<Vec<RecordBatch>, DatasetError> {
        decode(ds.format, self.read(ds).await?)
    }

    /// Reads the partition `latest` points at as batches.
    pub async fn read_latest_batches(&self, name: &str) -> Result<(Latest, Vec<RecordBatch>), DatasetError> {
        let (latest, data) = self.read_latest(name).await?;
        let batches = decode(latest.format, data)?;
        Ok((latest, batches))
    }
}
