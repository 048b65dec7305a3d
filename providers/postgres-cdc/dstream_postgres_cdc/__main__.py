from dstream_postgres_cdc import main

main()
