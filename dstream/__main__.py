from dstream.cli import main

main()
