# The tutorial's client for the server with a JSON header padded to 100
# bytes, as written there; only the port comes from argv.
import socket
import json
import sys
ip_port = ('127.0.0.1', int(sys.argv[1]))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
res = s.connect_ex(ip_port)
while True:
    msg = input('>>: ').strip()
    if len(msg) == 0: continue
    if msg == 'quit': break
    s.send(msg.encode('utf-8'))
    response_msg_header = s.recv(100).decode("utf-8")
    response_msg_header_data = json.loads(response_msg_header)
    msg_size = response_msg_header_data['length']
    res = s.recv(msg_size)
    print("received res size ",len(res))
    print(res.decode('utf-8'), end='')
