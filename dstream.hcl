# The demo pipeline: a counter feeding the console.
task "counter-to-console" {
  type = "providers"
  input {
    provider_path = "counter-input-provider"
    config {
      interval  = 200
      max_count = 10
    }
  }
  output {
    provider_path = "console-output-provider"
    config {
      outputFormat = "simple"
    }
  }
}
