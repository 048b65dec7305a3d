from dstream_jq import main

main()
