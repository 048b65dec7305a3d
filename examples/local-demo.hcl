# The demo as local processes: no Docker needed.
#   pip install -e . -e providers/counter -e providers/console
#   dstream run counter-to-console -f examples/local-demo.hcl
task "counter-to-console" {
  input {
    provider_path = "counter-input-provider"
    config {
      interval  = "100ms"
      max_count = 20
    }
  }
  output {
    provider_path = "console-output-provider"
    config { outputFormat = "simple" }
  }
}
