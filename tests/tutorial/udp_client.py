# The tutorial's UDP client, as written there; only the port comes from argv.
from socket import *
import sys
import time
ip_port = ('127.0.0.1', int(sys.argv[1]))
bufsize = 1024
udp_client = socket(AF_INET, SOCK_DGRAM)
while True:
    msg = input('>>: ').strip()
    if len(msg) == 0: continue
    if msg == 'quit': break
    udp_client.sendto(msg.encode('utf-8'), ip_port)
    data, addr = udp_client.recvfrom(bufsize)
    print(data.decode('utf-8'), end='')
