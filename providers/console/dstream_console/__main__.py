from dstream_console import main

main()
