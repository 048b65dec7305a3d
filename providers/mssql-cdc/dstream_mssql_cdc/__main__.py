from dstream_mssql_cdc import main

main()
