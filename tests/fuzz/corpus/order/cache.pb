P2J
	/srv/data
--runtime-command=sh'
api http://127.0.0.1:8081/cache/dropR