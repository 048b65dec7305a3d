from dstream_counter import main

main()
