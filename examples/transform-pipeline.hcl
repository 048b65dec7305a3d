# A file of orders through a jq transform into another file: the audit rows are filtered
# out and the ssn column dropped.
#   pip install -e . -e providers/file -e providers/jq
#   dstream run orders-filter -f examples/transform-pipeline.hcl
#   cat examples/.dstream/out/orders-filtered.jsonl
# Paths in a config resolve beside this file.
task "orders-filter" {
  input {
    provider_path = "file-input-provider"
    config { path = "data/orders.jsonl" }
  }
  transform {
    provider_path = "jq-transform-provider"
    config {
      program = "select(.metadata.TableName != \"dbo.Audit\") | del(.data.ssn) | .data.region = $region"
      args    = { region = "eu" }
    }
  }
  output {
    provider_path = "file-output-provider"
    config { path = ".dstream/out/orders-filtered.jsonl" }
  }
}
